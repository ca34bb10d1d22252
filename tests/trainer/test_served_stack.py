"""A user adapter that passes its gate is published with its served stack: the pair it was gated
as, joined (shared/stacks.py); the trainer announces the stack first and keeps `*.stack` names."""

from __future__ import annotations

from loraswarm.services.trainer.pipeline import Published, Rejection, Trainer
from loraswarm.services.trainer.scope import Scope
from loraswarm.services.trainer.service import outcome_events
from loraswarm.shared.events import AdapterPublished, AdapterTrainRequested, TrainingData
from loraswarm.shared.stacks import StackPart, parts_of
from tests.trainer.conftest import refund_examples, write_examples


def request(user: str | None, name: str) -> AdapterTrainRequested:
    return AdapterTrainRequested(
        tenant_id="acme",
        user_id=user,
        name=name,
        data=TrainingData(documents=False, examples_path="ex.jsonl"),
        hyperparameters={"steps": 1},
    )


def test_a_user_adapter_is_published_with_the_stack_it_was_gated_as(trainer: Trainer) -> None:
    write_examples(trainer.files, Scope("acme"), "ex.jsonl", refund_examples("Acme", 45))
    write_examples(trainer.files, Scope("acme", "alice"), "ex.jsonl", refund_examples("Alice", 14))
    company = trainer.run(request(None, "company"))
    assert isinstance(company, Published) and company.stack is None, company  # a company adapter has none
    ask = request("alice", "user-alice")
    alice = trainer.run(ask)
    assert isinstance(alice, Published) and alice.stack is not None, alice
    assert getattr(alice.manifest, "stacked_on", None) == "acme/company@1"
    assert alice.stack.ref.id == "acme/user-alice.stack@1"
    assert parts_of(alice.stack.manifest) == [
        StackPart(name="company", version="1"),
        StackPart(name="user-alice", version="1"),
    ]
    # Announced stack first, then the adapter, with ids of their own.
    events = outcome_events(ask, alice)
    assert [(e.adapter_id, e.version) for e in events if isinstance(e, AdapterPublished)] == [
        ("acme/user-alice.stack", "1"),
        ("acme/user-alice", "1"),
    ]
    assert len({e.event_id for e in events}) == 2
    # The same request again (a redelivery): the same outcome, no second stack version.
    again = trainer.run(ask)
    assert isinstance(again, Published) and again.stack is not None
    assert again.stack.ref.id == alice.stack.ref.id
    assert trainer.store.versions("acme", "user-alice.stack") == ["1"]


def test_stack_names_belong_to_the_trainer(trainer: Trainer) -> None:
    write_examples(trainer.files, Scope("acme"), "ex.jsonl", refund_examples("Acme", 45))
    outcome = trainer.run(request(None, "company.stack"))
    assert isinstance(outcome, Rejection) and outcome.code == "invalid_request", outcome
    assert "served stacks" in outcome.reason
