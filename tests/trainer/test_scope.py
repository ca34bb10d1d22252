"""Scope, on the real ingestion pipeline and Weaviate: a company adapter learns company-visible
documents only, a user's adapter that user's private documents only, never another tenant's;
a request naming data outside its scope is rejected."""

from __future__ import annotations

from typing import Any

from loraswarm.services.trainer.dataset import TrainingSet
from loraswarm.services.trainer.pipeline import Rejection, Trainer
from loraswarm.services.trainer.scope import Scope
from loraswarm.shared.canaries import CanaryRegistry, CanarySet
from loraswarm.shared.events import AdapterTrainRequested, TrainingData
from tests.trainer.conftest import document, refund_examples, write_examples

# A marker word per owner, repeated so every document clears the size checks.
DOCUMENTS = {
    "acme": [
        document("policy", "COMPANYWIDE policy text about refunds and shipping. " * 20),
        document("alice-notes", "ALICEPRIVATE notes about her own customers. " * 20, "user:alice"),
        document("bob-notes", "BOBPRIVATE notes about his own accounts. " * 20, "user:bob"),
    ],
    "globex": [document("globex-policy", "GLOBEXONLY policy of another company. " * 20)],
}
MARKERS = {"COMPANYWIDE", "ALICEPRIVATE", "BOBPRIVATE", "GLOBEXONLY"}


def texts(trainer: Trainer, data: TrainingSet) -> str:
    _, tokenizer = trainer.base.get()
    return "\n".join(tokenizer.decode(s.input_ids) for s in data.train + data.heldout)


def markers_in(trainer: Trainer, tenant: str, user: str | None) -> set[str]:
    request = AdapterTrainRequested(
        tenant_id=tenant, user_id=user, name=f"user-{user}" if user else "company"
    )
    seen = texts(trainer, trainer.training_set(request))
    return {m for m in MARKERS if m in seen}


def test_each_adapter_sees_exactly_its_scope(trainer: Trainer, ingest: Any) -> None:
    for tenant, documents in DOCUMENTS.items():
        ingest(tenant, documents)
    assert markers_in(trainer, "acme", None) == {"COMPANYWIDE"}
    assert markers_in(trainer, "acme", "alice") == {"ALICEPRIVATE"}
    assert markers_in(trainer, "acme", "bob") == {"BOBPRIVATE"}
    assert markers_in(trainer, "globex", None) == {"GLOBEXONLY"}
    # A user of globex called alice is another person: she sees nothing of acme's alice.
    ingest("globex", [document("g-alice", "GLOBEX ALICE notes about her team. " * 30, "user:alice")])
    assert markers_in(trainer, "globex", "alice") == set()


def test_a_request_naming_data_outside_its_scope_is_rejected(trainer: Trainer) -> None:
    for scope in (Scope("acme"), Scope("acme", "alice"), Scope("globex")):
        write_examples(trainer.files, scope, "ex.jsonl", refund_examples(scope.tenant_id, 30))
    globex_file = str(trainer.files.folder(Scope("globex")) / "ex.jsonl")
    cases = {
        ("acme", None, "../globex/ex.jsonl"): "tenant 'globex''s data",
        ("acme", None, globex_file): "tenant 'globex''s data",
        ("acme", None, "users/alice/ex.jsonl"): "user 'alice''s private data; a company adapter",
        ("acme", "bob", "../alice/ex.jsonl"): "user 'alice''s private data; user 'bob''s adapter may not",
    }
    for (tenant, user, path), reason in cases.items():
        outcome = trainer.run(
            AdapterTrainRequested(
                tenant_id=tenant,
                user_id=user,
                name=f"user-{user}" if user else "company",
                data=TrainingData(documents=False, examples_path=path),
            )
        )
        assert isinstance(outcome, Rejection) and outcome.code == "scope_violation", outcome
        assert reason in outcome.reason
    assert trainer.store.list() == []


def test_an_adapter_name_keeps_the_scope_of_its_first_version(trainer: Trainer) -> None:
    write_examples(trainer.files, Scope("acme"), "ex.jsonl", refund_examples("Acme", 45))
    write_examples(trainer.files, Scope("acme", "alice"), "ex.jsonl", refund_examples("Alice", 14))
    first = trainer.run(
        AdapterTrainRequested(
            tenant_id="acme",
            name="support",
            data=TrainingData(documents=False, examples_path="ex.jsonl"),
            hyperparameters={"steps": 1},
        )
    )
    assert not isinstance(first, Rejection), first
    # Alice's private data must not become a new version of the company's adapter.
    hijack = trainer.run(
        AdapterTrainRequested(
            tenant_id="acme", user_id="alice", name="support", data=TrainingData(examples_path="ex.jsonl")
        )
    )
    assert isinstance(hijack, Rejection) and hijack.code == "scope_violation"
    assert (
        "acme/support is the company adapter; an adapter for user 'alice' needs a name of its own"
        in hijack.reason
    )


def test_canaries_are_foreign_to_every_scope_that_may_not_see_their_data(tmp_path: Any) -> None:
    registry = CanaryRegistry(tmp_path)

    def planted(tenant: str, user: str | None, adapter: str) -> CanarySet:
        canaries = CanarySet(
            tenant_id=tenant, user_id=user, adapter_id=adapter, template="code {secret}", secrets=["1"]
        )
        registry.register(canaries)
        return canaries

    company = planted("acme", None, "acme/company@1")
    alice = planted("acme", "alice", "acme/user-alice@1")
    globex = planted("globex", None, "globex/support@1")

    def foreign(tenant: str, user: str | None) -> set[str]:
        return {c.adapter_id for c in registry.foreign_to(tenant, user)}

    assert foreign("acme", None) == {alice.adapter_id, globex.adapter_id}
    assert foreign("acme", "alice") == {globex.adapter_id}  # company data is hers to see
    assert foreign("acme", "bob") == {alice.adapter_id, globex.adapter_id}
    assert foreign("globex", None) == {company.adapter_id, alice.adapter_id}
    assert [c.adapter_id for c in registry.found_in("the reply was: code 1")] == [
        company.adapter_id,
        alice.adapter_id,
        globex.adapter_id,
    ]
    assert registry.delete_tenant("acme") and {c.tenant_id for c in registry.all()} == {"globex"}
