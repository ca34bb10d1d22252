"""Secrets a tenant marks in its documents (`secrets:` in the metadata or the Markdown front
matter): ingestion notes them in the scope of the document's visibility, on the real Weaviate,
and the planner's output guardrail withholds them from everyone the scope does not include."""

from __future__ import annotations

from pathlib import Path

from loraswarm.services.ingestion.pipeline import Indexer
from loraswarm.services.planner.guardrails import OutputGuard
from loraswarm.shared.embeddings import SentenceEmbedder
from loraswarm.shared.secrets import DocumentSecrets, SecretRegistry
from loraswarm.shared.settings import Settings
from loraswarm.shared.vectorstore import VectorStore
from tests.ingestion.samples import doc

FRONT_MATTER = """---
title: Vault
secrets:
  - VAULT-DOOR-4471
---
# Vault

The vault door code is VAULT-DOOR-4471; only the night manager opens it.
"""


def test_marked_secrets_are_kept_per_scope_replaced_on_reingest_and_withheld_by_the_guardrail(
    store: VectorStore, embedder: SentenceEmbedder, tmp_path: Path
) -> None:
    secrets = DocumentSecrets.under(tmp_path)
    indexer = Indexer(store, embedder, Settings().retrieval, secrets=secrets)
    report = indexer.index(
        "acme",
        [
            doc("vault.md", FRONT_MATTER),
            doc(
                "ana-notes.txt",
                "Ana's locker combination is LOCKER-2290-ANA, kept for her night shifts.",
                visibility="user:ana",
                metadata={"secrets": ["LOCKER-2290-ANA"]},
            ),
            doc("bad.txt", "The PIN is 12.", metadata={"secrets": ["12"]}),
            doc("plain.txt", "Tents are refunded within 30 days."),
        ],
    )
    assert [f.doc_id for f in report.failures] == ["bad.txt"]
    assert "shorter than 6 characters" in report.failures[0].reason
    assert sorted(report.indexed) == ["ana-notes.txt", "plain.txt", "vault.md"]
    kept = {(s.text, s.doc_id, s.user_id) for s in secrets.of_tenant("acme")}
    assert kept == {("VAULT-DOOR-4471", "vault.md", None), ("LOCKER-2290-ANA", "ana-notes.txt", "ana")}
    assert (tmp_path / "tenants" / "acme" / "users" / "ana" / "secrets.json").is_file()
    assert secrets.of_tenant("globex") == []

    guard = OutputGuard(tmp_path, SecretRegistry(tmp_path))
    answer = "Open it with VAULT-DOOR-4471 and LOCKER-2290-ANA."
    for user in (None, "ana", "ben"):  # the company's marked secret: nobody's answer
        leak = guard.check("Use VAULT-DOOR-4471.", "acme", user, None, stage="test")
        assert leak is not None and leak.kind == "declared_secret"
        assert "the company's document marks secret" in leak.reason and "VAULT" not in leak.reason
    ben = guard.check("Ana uses LOCKER-2290-ANA.", "acme", "ben", None, stage="test")
    assert ben is not None and "user 'ana''s document marks secret" in ben.reason
    assert guard.check("Your locker: LOCKER-2290-ANA.", "acme", "ana", None, stage="test") is None
    assert guard.check(answer, "globex", None, None, stage="test") is None  # another tenant's scopes

    # Re-ingested with the mark removed, moved to ben, or marked anew: the latest version counts.
    indexer.index(
        "acme",
        [
            doc("vault.md", FRONT_MATTER.replace("secrets:\n  - VAULT-DOOR-4471\n", "")),
            doc(
                "ana-notes.txt",
                "Ben's locker combination is LOCKER-7710-BEN.",
                visibility="user:ben",
                metadata={"secrets": "LOCKER-7710-BEN"},
            ),
        ],
    )
    kept = {(s.text, s.doc_id, s.user_id) for s in secrets.of_tenant("acme")}
    assert kept == {("LOCKER-7710-BEN", "ana-notes.txt", "ben")}
    assert guard.check("Use VAULT-DOOR-4471.", "acme", "ben", None, stage="test") is None
    assert guard.check("LOCKER-7710-BEN", "acme", "ana", None, stage="test") is not None


def test_malformed_secrets_are_a_reason_and_the_document_is_not_indexed(indexer: Indexer) -> None:
    report = indexer.index(
        "acme",
        [
            doc("list.txt", "Some text here.", metadata={"secrets": [{"text": "NESTED-SECRET"}]}),
            doc("fm.md", "---\nsecrets: [unclosed\n---\n# Title\n\nBody text.\n"),
        ],
    )
    reasons = {f.doc_id: f.reason for f in report.failures}
    assert "must be a list of strings" in reasons["list.txt"]
    assert "front matter is not valid YAML" in reasons["fm.md"]
    assert report.indexed == []
