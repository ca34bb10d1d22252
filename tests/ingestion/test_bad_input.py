"""Bad input: each a `documents.failed` reason, the service alive, the other documents indexed.

Once from files on disk (the CLI's path, which also meets the 50 MB file), once through the
ingestion service on the bus — in-process and on the real Kafka.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from loraswarm.services.ingestion import app
from loraswarm.services.ingestion.files import FileOptions, discover, load_file
from loraswarm.services.ingestion.pipeline import Indexer
from loraswarm.shared.events import (
    Document,
    DocumentFailure,
    DocumentsFailed,
    DocumentsIndexed,
    DocumentsSubmitted,
)
from loraswarm.shared.retrieval import Retriever
from loraswarm.shared.settings import Settings
from loraswarm.shared.vectorstore import VectorStore
from tests.ingestion.samples import doc, pdf_with_text, pdf_without_text
from tests.shared.test_bus import until

GOOD_MD = "# Tents\n\nThe Trailhead tent pitches fly-first in the rain."
RECORDS = "\n".join(
    [
        json.dumps({"id": "r1", "text": "Stove will not light"}),
        json.dumps({"id": "r2", "body": "no text field"}),
    ]
)

# What each bad input must be refused with (a substring of the reason).
EXPECTED = {
    "empty.txt": "empty document (0 bytes)",
    "garbage.txt": "binary content",
    "huge.txt": "too large: 50.0 MiB, over the 10.0 MiB limit",
    "latin1.txt": "not valid UTF-8",
    "scan.pdf": "the PDF has no text layer",
    "records.jsonl#r2": "has no 'text' field",
}


def write_inputs(folder: Path) -> None:
    (folder / "empty.txt").write_bytes(b"")
    (folder / "garbage.txt").write_bytes(os.urandom(64 * 1024))
    with (folder / "huge.txt").open("wb") as f:
        block = b"fifty megabytes of words " * 4096
        for _ in range(50 * 2**20 // len(block)):
            f.write(block)
        f.write(b"x" * (50 * 2**20 - f.tell()))
    (folder / "latin1.txt").write_bytes("Prix réduit pour les tentes".encode("latin-1"))
    (folder / "scan.pdf").write_bytes(pdf_without_text())
    (folder / "records.jsonl").write_text(RECORDS)
    (folder / "good.md").write_text(GOOD_MD)
    (folder / "good.pdf").write_bytes(pdf_with_text("The warranty covers packs for life."))


def reasons_by_name(failures: list[DocumentFailure]) -> dict[str, str]:
    return {Path(f.doc_id).name: f.reason for f in failures}


def test_bad_files_fail_with_reasons_and_good_ones_are_indexed(
    indexer: Indexer, store: VectorStore, retriever: Retriever, tmp_path: Path
) -> None:
    write_inputs(tmp_path)
    assert (tmp_path / "huge.txt").stat().st_size == 50 * 2**20
    options = FileOptions(max_bytes=10 * 2**20)
    loaded = [load_file(f, options) for f in discover([tmp_path])]
    refused = [d for d in loaded if isinstance(d, DocumentFailure)]
    report = indexer.index("acme", [d for d in loaded if isinstance(d, Document)])

    reasons = reasons_by_name(refused + report.failures)
    assert set(reasons) == set(EXPECTED), reasons
    for name, reason in EXPECTED.items():
        assert reason in reasons[name], f"{name}: {reasons[name]}"
    assert sorted(Path(d).name for d in report.indexed) == ["good.md", "good.pdf", "records.jsonl"]
    found = {p.citation.doc_id.rsplit("/", 1)[-1] for p in retriever.search("acme", "tent in the rain", k=10)}
    assert found == {"good.md", "good.pdf", "records.jsonl#r1"}


async def test_the_service_reports_each_failure_and_stays_alive(
    settings: Settings, store: VectorStore, indexer: Indexer
) -> None:
    settings.retrieval.collection = store.name
    settings.retrieval.max_document_bytes = 64 * 1024
    indexer.settings = settings.retrieval
    bus = app.build(settings, indexer)
    indexed: list[DocumentsIndexed] = []
    failed: list[DocumentsFailed] = []

    @bus.consumer(DocumentsIndexed, group="test-watch")
    async def on_indexed(event: DocumentsIndexed) -> None:
        indexed.append(event)

    @bus.consumer(DocumentsFailed, group="test-watch")
    async def on_failed(event: DocumentsFailed) -> None:
        failed.append(event)

    bad = DocumentsSubmitted(
        tenant_id="acme",
        documents=[
            doc("empty.txt", b""),
            doc("garbage.txt", os.urandom(4096)),
            doc("huge.txt", "words " * 20_000),  # 117 KiB: over this test's 64 KiB limit
            doc("latin1.txt", "Prix réduit".encode("latin-1")),
            doc("scan.pdf", pdf_without_text()),
            doc("records.jsonl", RECORDS),
            doc("good.md", GOOD_MD),
        ],
    )
    after = DocumentsSubmitted(tenant_id="acme", documents=[doc("later.md", "# Later\n\nStill indexing.")])
    async with bus:
        await bus.publish(bad)
        await until(lambda: len(indexed) == 1 and len(failed) == 1, timeout_s=120)
        await bus.publish(after)
        await until(lambda: len(indexed) == 2, timeout_s=120)
        await asyncio.sleep(0.2)

    (failure_event,) = failed
    assert failure_event.causation_id == bad.event_id and failure_event.request_id == bad.request_id
    reasons = reasons_by_name(list(failure_event.failures))
    expected = {**EXPECTED, "huge.txt": "too large: 117.2 KiB, over the 64.0 KiB limit"}
    assert set(reasons) == set(expected)
    for name, reason in expected.items():
        assert reason in reasons[name], f"{name}: {reasons[name]}"
    first, second = indexed
    assert first.causation_id == bad.event_id
    assert first.doc_ids == ["records.jsonl", "good.md"] and first.chunks == 2
    assert second.doc_ids == ["later.md"], "the service handles the next submission"
    assert store.count("acme") == 3


async def test_a_store_outage_is_retried_then_dead_lettered_not_crashing(
    tmp_path: Path, store: VectorStore, indexer: Indexer
) -> None:
    from loraswarm.shared.events import DeadLetter
    from tests.conftest import isolated_settings
    from tests.shared.test_bus import collect_dead_letters

    settings = isolated_settings("memory", tmp_path)
    broken = VectorStore.open(Settings(), store.name)
    broken.client.close()  # every call now fails like an unreachable server
    bus = app.build(settings, Indexer(broken, indexer.embedder, settings.retrieval))
    letters: list[DeadLetter] = []
    collect_dead_letters(bus, letters)
    async with bus:
        await bus.publish(DocumentsSubmitted(tenant_id="acme", documents=[doc("a.md", "# A\n\ntext")]))
        await until(lambda: len(letters) == 1, timeout_s=60)
    assert letters[0].error_type == "handler_error"
    assert letters[0].attempts == settings.kafka.handler_attempts
