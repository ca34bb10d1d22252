"""Bad input reaches the trainer service as `adapter.train.requested` and leaves as one clear
`adapter.rejected` each, with a code, a reason naming the fix, and nothing half-published."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from loraswarm.services.trainer.app import build
from loraswarm.services.trainer.pipeline import Rejection, Trainer
from loraswarm.services.trainer.scope import Scope
from loraswarm.services.trainer.service import TrainerService
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import (
    AdapterPublished,
    AdapterRejected,
    AdapterTrainProgress,
    AdapterTrainRequested,
    TrainingData,
)
from tests.shared.test_bus import until
from tests.trainer.conftest import document, refund_examples, write_examples


@dataclass
class Outcomes:
    rejected: list[AdapterRejected] = field(default_factory=list)
    published: list[AdapterPublished] = field(default_factory=list)
    progress: list[AdapterTrainProgress] = field(default_factory=list)


@dataclass
class Running:
    bus: EventBus
    service: TrainerService
    outcomes: Outcomes
    trainer: Trainer


@pytest.fixture
async def running(trainer: Trainer) -> AsyncIterator[Running]:
    bus, service = build(trainer.settings, trainer)
    outcomes = Outcomes()

    @bus.broker.subscriber(
        bus.topic("adapter.rejected"), group_id="watch-rejected", auto_offset_reset="earliest"
    )
    async def on_rejected(event: AdapterRejected) -> None:
        outcomes.rejected.append(event)

    @bus.broker.subscriber(
        bus.topic("adapter.published"), group_id="watch-published", auto_offset_reset="earliest"
    )
    async def on_published(event: AdapterPublished) -> None:
        outcomes.published.append(event)

    @bus.broker.subscriber(
        bus.topic("adapter.train.progress"), group_id="watch-progress", auto_offset_reset="earliest"
    )
    async def on_progress(event: AdapterTrainProgress) -> None:
        outcomes.progress.append(event)

    async with bus:
        yield Running(bus, service, outcomes, trainer)
        await service.drain()


def ask(tenant: str, name: str, user: str | None = None, **fields: Any) -> AdapterTrainRequested:
    data = TrainingData(**fields.pop("data", {"documents": False, "examples_path": "ex.jsonl"}))
    return AdapterTrainRequested(tenant_id=tenant, user_id=user, name=name, data=data, **fields)


async def test_each_bad_input_is_one_clear_rejection_and_nothing_is_published(
    running: Running, ingest: Any
) -> None:
    trainer = running.trainer
    ingest("acme", [document("handbook", "Refunds within 45 days. " * 20)])
    good = json.dumps(refund_examples("Acme", 45, n=1)[0])
    write_examples(trainer.files, Scope("acme"), "ex.jsonl", refund_examples("Acme", 45))
    write_examples(trainer.files, Scope("acme"), "blank.jsonl", ["", "   "])
    write_examples(trainer.files, Scope("acme"), "tiny.jsonl", refund_examples("Acme", 45, n=2))
    write_examples(trainer.files, Scope("acme"), "corrupt.jsonl", [good, good, '{"prompt": "cut off', good])
    write_examples(trainer.files, Scope("globex"), "ex.jsonl", refund_examples("Globex", 30))

    cases: dict[str, tuple[AdapterTrainRequested, str, str]] = {
        "empty, documents": (
            ask("acme", "user-bob", "bob", data={"documents": True}),
            "empty_dataset",
            "nothing to train on in scope acme user bob: no user:bob chunks",
        ),
        "empty, examples": (
            ask("acme", "a2", data={"documents": False, "examples_path": "blank.jsonl"}),
            "empty_dataset",
            "an examples file with no lines",
        ),
        "tiny": (
            ask("acme", "a3", data={"documents": False, "examples_path": "tiny.jsonl"}),
            "tiny_dataset",
            "at least 64 tokens",
        ),
        "wrong base model": (
            ask("acme", "a4", base_model="meta-llama/Llama-3.1-8B"),
            "wrong_base_model",
            "this trainer's base model is 'SmolLM2-135M-Instruct'",
        ),
        "unknown tenant": (
            ask("nobody", "a5", data={"documents": True}),
            "unknown_tenant",
            "unknown tenant 'nobody'",
        ),
        "corrupt line": (
            ask("acme", "a6", data={"documents": False, "examples_path": "corrupt.jsonl"}),
            "corrupt_data",
            "corrupt.jsonl has 1 corrupt line(s) of 4; fix or remove them and ask again — nothing was trained: "
            "line 3: not valid JSON",
        ),
        "another tenant's data": (
            ask("acme", "a7", data={"documents": False, "examples_path": "../globex/ex.jsonl"}),
            "scope_violation",
            "tenant 'globex''s data",
        ),
    }
    for request, _, _ in cases.values():
        await running.bus.publish(request)
    await until(lambda: len(running.outcomes.rejected) == len(cases), timeout_s=300)
    await running.service.drain()

    by_request = {e.causation_id: e for e in running.outcomes.rejected}
    for label, (request, code, reason) in cases.items():
        event = by_request[request.event_id]
        assert event.code == code, (label, event.reason)
        assert reason in event.reason, (label, event.reason)
        assert event.adapter_id == f"{request.tenant_id}/{request.name}"
        assert event.request_id == request.request_id
    assert by_request[cases["corrupt line"][0].event_id].metrics["corrupt_lines"] == 1
    assert_nothing_published(running)


async def test_nan_loss_and_a_second_request_while_training_are_rejected(running: Running) -> None:
    trainer = running.trainer
    write_examples(trainer.files, Scope("acme"), "ex.jsonl", refund_examples("Acme", 45))
    # 1e37 is finite, but the second step's LoRA delta overflows float32: a real NaN loss.
    exploding = ask("acme", "support", hyperparameters={"learning_rate": 1e37, "steps": 4})
    meanwhile = ask("acme", "support")

    await running.bus.publish(exploding)
    await running.bus.publish(meanwhile)
    await until(lambda: len(running.outcomes.rejected) == 2, timeout_s=300)
    await running.service.drain()

    by_request = {e.causation_id: e for e in running.outcomes.rejected}
    busy = by_request[meanwhile.event_id]
    assert busy.code == "already_training"
    assert f"acme/support is already being trained (request {exploding.event_id}" in busy.reason
    nan = by_request[exploding.event_id]
    assert nan.code == "nan_loss", nan.reason
    assert "the loss became nan at step" in nan.reason and "lower the learning rate" in nan.reason
    assert nan.metrics["nan_step"] >= 2 and nan.metrics["examples"] == 16
    assert_nothing_published(running)
    # The lock went with the job: the adapter can be trained again.
    with trainer.locks.acquire("acme/support", "test"):
        pass


def test_a_verdict_on_the_adapter_is_kept_and_a_refusal_of_the_moment_is_not(trainer: Trainer) -> None:
    """The same request comes to the same verdict without training again; a retry after a
    refusal that depends on the moment (here: no data yet) is trained."""
    write_examples(trainer.files, Scope("acme"), "ex.jsonl", refund_examples("Acme", 45))
    exploding = ask("acme", "support", hyperparameters={"learning_rate": 1e37, "steps": 4})
    steps: list[int] = []

    def sink(phase: str, step: int, total: int, loss: float | None) -> None:
        steps.append(step)

    first = trainer.run(exploding, progress=sink)
    assert isinstance(first, Rejection) and first.code == "nan_loss", first
    trained = len(steps)
    assert trained > 0
    again = trainer.run(exploding, progress=sink)
    assert again == first and len(steps) == trained  # nothing trained the second time
    assert trainer.refused_for(exploding) == first
    # Unless asked to train again (`loraswarm demo --retrain`).
    retried = trainer.run(exploding, progress=sink, again=True)
    assert isinstance(retried, Rejection) and retried.code == "nan_loss" and len(steps) > trained
    trained = len(steps)
    # Another request for the same adapter is judged on its own.
    other = exploding.model_copy(update={"event_id": uuid.uuid4()})
    assert trainer.refused_for(other) is None
    assert isinstance(trainer.run(other, progress=sink), Rejection) and len(steps) > trained

    early = ask("globex", "support", hyperparameters={"steps": 2})
    first_try = trainer.run(early)
    assert isinstance(first_try, Rejection) and first_try.code == "unknown_tenant", first_try
    assert trainer.refused_for(early) is None
    write_examples(trainer.files, Scope("globex"), "ex.jsonl", refund_examples("Globex", 30))
    steps.clear()
    trainer.run(early, progress=sink)
    assert steps, "the retry was not trained"
    # Deleting the tenant deletes its verdicts with its adapters.
    trainer.store.delete_tenant("acme")
    assert trainer.refused_for(exploding) is None


def assert_nothing_published(running: Running) -> None:
    trainer = running.trainer
    assert running.outcomes.published == []
    assert trainer.store.list() == []
    leftovers = [p for p in trainer.store.root.rglob("*")] if trainer.store.root.exists() else []
    assert not [
        p for p in leftovers if p.name.startswith(".staging") or (p.name == "versions" and any(p.iterdir()))
    ]
    assert running.service.journal.pending() == []
