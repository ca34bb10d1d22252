"""Indexing on the real Weaviate: idempotent re-ingest, edits replace chunks, deletes leave nothing."""

from __future__ import annotations

import json
from pathlib import Path

from loraswarm.services.ingestion.files import FileOptions, discover, load_file
from loraswarm.services.ingestion.pipeline import Indexer, IndexReport
from loraswarm.shared.chunks import chunk_uuid
from loraswarm.shared.events import Document, DocumentFailure
from loraswarm.shared.retrieval import Retriever
from loraswarm.shared.vectorstore import VectorStore


def ingest(indexer: Indexer, tenant: str, folder: Path, **options: str) -> IndexReport:
    docs = [load_file(f, FileOptions(**options)) for f in discover([folder])]  # type: ignore[arg-type]
    assert not [d for d in docs if isinstance(d, DocumentFailure)]
    return indexer.index(tenant, [d for d in docs if isinstance(d, Document)])


def long_markdown(topic: str, n: int) -> str:
    paragraphs = [
        f"Paragraph {i} explains the {topic} rules in detail, with examples and exceptions." for i in range(n)
    ]
    return f"# {topic.title()}\n\n" + "\n\n".join(paragraphs) + "\n"


def object_ids(store: VectorStore, tenant: str) -> set[str]:
    return {str(o.uuid) for o in store.collection.with_tenant(tenant).iterator()}


def test_reingesting_the_same_files_changes_nothing(
    indexer: Indexer, store: VectorStore, tmp_path: Path
) -> None:
    (tmp_path / "refunds.md").write_text(long_markdown("refund", 30))
    (tmp_path / "faq.txt").write_text("Shipping is free over $75.")
    (tmp_path / "tickets.csv").write_text("id,text\n1,Tent pole snapped\n2,Zipper stuck\n")

    first = ingest(indexer, "acme", tmp_path)
    count, ids = store.count("acme"), object_ids(store, "acme")
    assert first.chunks == count > 4 and not first.failures

    again = ingest(indexer, "acme", tmp_path)
    assert store.count("acme") == count and object_ids(store, "acme") == ids
    assert sorted(again.unchanged) == sorted(first.indexed) and again.chunks == 0

    # Even when written again (no skip), deterministic ids overwrite instead of adding.
    chunks = list(store.chunks("acme"))
    store.upsert("acme", chunks, indexer.embedder.encode([c.text for c in chunks]))
    assert store.count("acme") == count and object_ids(store, "acme") == ids
    assert ids == {str(chunk_uuid("acme", c.doc_id, c.position)) for c in chunks}


def test_an_edited_file_replaces_its_chunks(
    indexer: Indexer, store: VectorStore, retriever: Retriever, tmp_path: Path
) -> None:
    handbook = tmp_path / "handbook.md"
    handbook.write_text(long_markdown("refund", 40))
    (tmp_path / "other.md").write_text("# Other\n\nUnrelated text that stays.")
    (tmp_path / "records.jsonl").write_text(
        "\n".join(json.dumps({"id": i, "text": f"record {i} about kayaks"}) for i in range(3))
    )
    ingest(indexer, "acme", tmp_path)
    parent = handbook.resolve().as_posix()
    before = store.count("acme", parent_id=parent)
    assert before > 3

    handbook.write_text("# Warranty\n\nPacks are covered for life against defects in materials.\n")
    (tmp_path / "records.jsonl").write_text(json.dumps({"id": 1, "text": "record 1 now about canoes"}))
    report = ingest(indexer, "acme", tmp_path)
    assert report.chunks == 2 and sorted(report.unchanged) == [(tmp_path / "other.md").resolve().as_posix()]

    assert store.count("acme", parent_id=parent) == 1
    (chunk,) = [c for c in store.chunks("acme") if c.parent_id == parent]
    assert chunk.text == "Warranty\nPacks are covered for life against defects in materials."
    assert not [
        p for p in retriever.search("acme", "refund rules examples", k=20, alpha=0.0) if "refund" in p.text
    ]
    records = sorted(c.doc_id.rsplit("#", 1)[1] for c in store.chunks("acme") if "records.jsonl" in c.doc_id)
    assert records == ["1"], "records removed from the file are removed from the shard"
    assert store.count("acme") == 3  # handbook 1 + other 1 + one record


def test_deletes_by_document_source_user_and_tenant(
    indexer: Indexer, store: VectorStore, tmp_path: Path
) -> None:
    wiki, crm, mine = tmp_path / "wiki", tmp_path / "crm", tmp_path / "mine"
    for folder in (wiki, crm, mine):
        folder.mkdir()
    (wiki / "a.md").write_text("# A\n\nAlpha page.")
    (wiki / "b.md").write_text("# B\n\nBeta page.")
    (crm / "c.csv").write_text("id,text\n1,Customer one\n2,Customer two\n")
    (mine / "notes.txt").write_text("Private notes of Ada.")
    ingest(indexer, "acme", wiki, source="wiki")
    ingest(indexer, "acme", crm, source="crm")
    ingest(indexer, "acme", mine, source="notes", visibility="user:ada")
    ingest(indexer, "globex", wiki, source="wiki")
    assert store.count("acme") == 5

    assert store.delete("acme", doc_id=(wiki / "a.md").resolve().as_posix()) == 1
    assert store.delete("acme", doc_id=(crm / "c.csv").resolve().as_posix()) == 2  # all its records
    assert store.delete("acme", user_id="ada") == 1
    assert [c.doc_id for c in store.chunks("acme")] == [(wiki / "b.md").resolve().as_posix()]
    assert store.delete("acme", source="wiki") == 1
    assert store.count("acme") == 0

    assert store.count("globex") == 2, "deletes in one tenant never touch another"
    assert store.delete_tenant("globex")
    assert "globex" not in store.tenants()
    assert store.count("globex") == 0 and list(store.chunks("globex")) == []
    assert not store.delete_tenant("globex")
