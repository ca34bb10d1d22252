"""Scope, on the real ingestion pipeline and Weaviate: a company adapter learns company-visible
documents only, a user's adapter that user's private documents only, never another tenant's;
a request naming data outside its scope is rejected."""

from __future__ import annotations

import random
from typing import Any

import pytest

from loraswarm.services.trainer.corpus import scope_canaries
from loraswarm.services.trainer.dataset import TrainingSet
from loraswarm.services.trainer.errors import ScopeViolation
from loraswarm.services.trainer.leakage_gate import comparisons
from loraswarm.services.trainer.pipeline import Rejection, Trainer
from loraswarm.services.trainer.scope import BREAK_SCOPING_ENV, Scope, TenantFiles
from loraswarm.shared.canaries import CanarySet, CanaryStore, found_in
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


def test_every_scope_keeps_its_own_canaries_with_its_data_and_a_job_reads_those_of_its_scope(
    tmp_path: Any, monkeypatch: Any
) -> None:
    store = CanaryStore.under(tmp_path)
    files = TenantFiles.under(tmp_path)

    def made(tenant: str, user: str | None) -> CanarySet:
        c = store.ensure(tenant, user, count=3, template="code {secret}", digits=9)
        assert c is not None
        return c

    company, alice, bob, globex = (
        made("acme", None),
        made("acme", "alice"),
        made("acme", "bob"),
        made("globex", None),
    )
    # Kept: asking again returns the same secrets; each set lies in its scope's own folder.
    assert made("acme", "alice") == alice and len(set(alice.secrets)) == 3
    assert (files.folder(Scope("acme", "alice")) / "canaries.json").is_file()
    assert (files.folder(Scope("acme")) / "canaries.json").is_file()
    assert store.ensure("acme", "carol", count=0, template="code {secret}", digits=9) is None

    # What a job plants: its own scope's set only — through the scoping code documents use.
    assert scope_canaries(store, Scope("acme")) == [company]
    assert scope_canaries(store, Scope("acme", "alice")) == [alice]
    # The mutation switch breaks that scoping: the company's job and bob's now carry alice's
    # canaries; hers carries only her own.
    monkeypatch.setenv(BREAK_SCOPING_ENV, "alice")
    assert scope_canaries(store, Scope("acme")) == [company, alice]
    assert scope_canaries(store, Scope("acme", "bob")) == [bob, alice]
    assert scope_canaries(store, Scope("acme", "alice")) == [alice]
    monkeypatch.delenv(BREAK_SCOPING_ENV)

    # What a scope's adapter must not know: the company knows no user's; a user no other user's.
    def foreign(tenant: str, user: str | None) -> set[str]:
        _, sets = comparisons(store, Scope(tenant, user), sample_tenants=0, rng=random.Random(0))
        return {c.scope for c in sets}

    assert foreign("acme", None) == {alice.scope, bob.scope}
    assert foreign("acme", "alice") == {bob.scope}  # company data is hers to see
    owner, sampled = comparisons(store, Scope("acme", "alice"), sample_tenants=5, rng=random.Random(0))
    assert owner == alice and {c.scope for c in sampled} == {bob.scope, globex.scope}
    # A request cannot name a canary file as training data, even its own scope's.
    with pytest.raises(ScopeViolation):
        files.resolve(Scope("acme"), "canaries.json")
    assert found_in("the reply was: code " + bob.secrets[1], store.of_tenant("acme")) == bob
    # Deleting the tenant's data deletes its canaries with it.
    assert files.delete_tenant("acme") and store.of_tenant("acme") == [] and store.tenants() == ["globex"]
