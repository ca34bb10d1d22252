"""`loraswarm ingest`, `search` and `documents`, run in-process against the real Weaviate and Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loraswarm.cli import app
from loraswarm.services.ingestion import app as ingestion
from loraswarm.services.ingestion.pipeline import Indexer
from loraswarm.shared.events import DocumentsIndexed
from loraswarm.shared.settings import Settings
from loraswarm.shared.vectorstore import VectorStore
from tests.conftest import isolated_settings
from tests.ingestion.conftest import unique_collection
from tests.shared.test_bus import until

runner = CliRunner()


@pytest.fixture
def collection(weaviate_ready: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = unique_collection()
    monkeypatch.setenv("LORASWARM_RETRIEVAL__COLLECTION", name)
    monkeypatch.setenv("COLUMNS", "200")
    yield name
    with VectorStore.open(Settings(), name) as store:
        store.client.collections.delete(name)


def test_ingest_search_count_and_delete(collection: str, tmp_path: Path) -> None:
    docs, private = tmp_path / "docs", tmp_path / "private"
    docs.mkdir()
    private.mkdir()
    (docs / "refunds.md").write_text("# Refunds\n\nUnworn items can be returned within 60 days.")
    (docs / "tickets.csv").write_text("ticket,subject,body\nT1,Tent,Pole snapped on day two\n")
    (docs / ".hidden.md").write_text("# Hidden\n\nnot ingested")
    (private / "note.txt").write_text("My own note: ask about the 60 days return window.")

    result = runner.invoke(
        app,
        [
            "ingest",
            "-t",
            "acme",
            "--source",
            "wiki",
            "--template",
            "{subject}: {body}",
            "--id-field",
            "ticket",
            str(docs),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2 documents indexed (2 records, 2 chunks written, 0 unchanged)" in result.output
    result = runner.invoke(app, ["ingest", "-t", "acme", "-u", "ada", "--source", "notes", str(private)])
    assert result.exit_code == 0, result.output

    result = runner.invoke(app, ["search", "-t", "acme", "return within 60 days", "-k", "5"])
    assert result.exit_code == 0, result.output
    assert "Unworn items can be returned within 60 days." in result.output
    assert f"(wiki · {(docs / 'refunds.md').resolve().as_posix()} · chunk 0)" in result.output
    assert "score " in result.output and "My own note" not in result.output
    result = runner.invoke(
        app, ["search", "-t", "acme", "-u", "ada", "return window note", "--source", "notes"]
    )
    assert "My own note" in result.output and "Unworn" not in result.output

    result = runner.invoke(app, ["documents", "count", "-t", "acme"])
    assert "acme: 3 chunks" in result.output
    result = runner.invoke(app, ["documents", "delete", "-t", "acme", "-u", "ada"])
    assert "1 chunks deleted from acme" in result.output
    result = runner.invoke(app, ["documents", "delete", "-t", "acme", "--all"])
    assert "tenant acme: shard deleted" in result.output
    result = runner.invoke(app, ["search", "-t", "acme", "refunds"])
    assert "no passages for 'refunds' in acme" in result.output


def test_ingest_reports_failures_and_exits_non_zero(collection: str, tmp_path: Path) -> None:
    (tmp_path / "good.md").write_text("# Good\n\ntext")
    (tmp_path / "empty.txt").write_text("")
    result = runner.invoke(app, ["ingest", "-t", "acme", str(tmp_path)])
    assert result.exit_code == 1
    assert "1 documents indexed" in result.output and "1 failed" in result.output
    assert "empty.txt: empty document (0 bytes)" in result.output
    result = runner.invoke(app, ["ingest", "-t", "Not A Tenant", str(tmp_path)])
    assert result.exit_code == 1 and "tenant_id must be" in result.output


async def test_ingest_publish_hands_files_to_the_ingestion_service(
    kafka_bootstrap: str,
    tmp_path: Path,
    store: VectorStore,
    indexer: Indexer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = isolated_settings("kafka", tmp_path, kafka_bootstrap)
    settings.retrieval.collection = store.name
    monkeypatch.setenv("LORASWARM_BROKER", "kafka")
    monkeypatch.setenv("LORASWARM_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("LORASWARM_KAFKA__TOPIC_PREFIX", settings.kafka.topic_prefix)
    monkeypatch.setenv("LORASWARM_DATA_DIR", str(tmp_path / "cli"))
    for i in range(3):
        (tmp_path / f"page{i}.md").write_text(f"# Page {i}\n\nContent of page {i}.")
    bus = ingestion.build(settings, indexer)
    indexed: list[DocumentsIndexed] = []

    @bus.consumer(DocumentsIndexed, group="test-watch")
    async def on_indexed(event: DocumentsIndexed) -> None:
        indexed.append(event)

    async with bus:
        result = await asyncio.to_thread(
            runner.invoke, app, ["ingest", "-t", "acme", "--publish", str(tmp_path)]
        )
        assert result.exit_code == 0, result.output
        assert "submitted 3 documents" in result.output
        await until(lambda: bool(indexed), timeout_s=120)
    assert len(indexed[0].doc_ids) == 3 and store.count("acme") == 3
