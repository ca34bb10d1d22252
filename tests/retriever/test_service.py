"""The retriever and ingestion services on the bus, in-process and on the real Kafka."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from loraswarm.services.ingestion import app as ingestion
from loraswarm.services.ingestion.pipeline import Indexer
from loraswarm.services.retriever import app as retriever_app
from loraswarm.shared.bus import EventBus
from loraswarm.shared.envelope import Envelope
from loraswarm.shared.events import (
    DocumentsIndexed,
    DocumentsSubmitted,
    RetrievalCompleted,
    RetrievalRequested,
)
from loraswarm.shared.retrieval import Retriever
from loraswarm.shared.settings import Settings
from loraswarm.shared.vectorstore import VectorStore
from tests.conftest import isolated_settings
from tests.ingestion.samples import doc
from tests.shared.test_bus import until


async def test_documents_in_then_passages_out_over_the_bus(
    settings: Settings,
    store: VectorStore,
    indexer: Indexer,
    retriever: Retriever,
    spans: InMemorySpanExporter,
) -> None:
    settings.retrieval.collection = store.name
    bus = ingestion.build(settings, indexer)
    searcher = retriever_app.build(settings, retriever)
    indexed: list[DocumentsIndexed] = []
    completed: dict[str, RetrievalCompleted] = {}

    @bus.consumer(DocumentsIndexed, group="test-watch")
    async def on_indexed(event: DocumentsIndexed) -> None:
        indexed.append(event)

    @bus.consumer(RetrievalCompleted, group="test-watch")
    async def on_completed(event: RetrievalCompleted) -> None:
        completed[event.user_id or "-"] = event

    submitted = DocumentsSubmitted(
        tenant_id="acme",
        documents=[
            doc("policy.md", "# Refunds\n\nRefunds are paid within 60 days.", source="wiki", title="Policy"),
            doc(
                "ada.txt",
                "Ada's private note: refunds owed to her team.",
                source="notes",
                visibility="user:ada",
            ),
        ],
    )
    async with bus, searcher:
        await bus.publish(submitted)
        await until(lambda: len(indexed) == 1, timeout_s=120)
        for user in (None, "ada"):
            await bus.publish(RetrievalRequested(tenant_id="acme", user_id=user, query="refunds", k=5))
        await bus.publish(RetrievalRequested(tenant_id="globex", user_id="zed", query="refunds"))
        await until(lambda: len(completed) == 3, timeout_s=120)
        await asyncio.sleep(0.2)

    assert indexed[0].doc_ids == ["policy.md", "ada.txt"] and indexed[0].chunks == 2
    assert set(indexed[0].timings_ms) >= {"parse", "embed", "total"}
    company = completed["-"]
    assert [p.citation.doc_id for p in company.passages] == ["policy.md"]
    (passage,) = company.passages
    assert passage.citation.source == "wiki" and passage.citation.title == "Policy"
    assert passage.citation.position == 0 and passage.score > 0
    assert passage.text == "Refunds\nRefunds are paid within 60 days."
    assert {p.citation.doc_id for p in completed["ada"].passages} == {"policy.md", "ada.txt"}
    assert completed["zed"].tenant_id == "globex" and completed["zed"].passages == []
    assert company.error is None and company.duration_ms > 0

    # The search and the embedding are traced inside the request's consumer span.
    finished = spans.get_finished_spans()
    searches = [s for s in finished if s.name == f"hybrid {store.name}"]
    assert len(searches) == 3
    for search in searches:
        assert search.attributes is not None and search.attributes["db.system.name"] == "weaviate"
        assert search.attributes["db.namespace"] in ("acme", "globex")
        (parent,) = [s for s in finished if search.parent and s.context.span_id == search.parent.span_id]
        assert parent.name.startswith("process ") and parent.name.endswith("retrieval.requested")
    writes = [s for s in finished if s.name == f"insert_many {store.name}"]
    embeds = [s for s in finished if s.name == "embeddings all-MiniLM-L6-v2"]
    assert writes and embeds
    assert {s.context.trace_id for s in writes} <= {
        s.context.trace_id for s in finished if "documents.submitted" in s.name
    }


async def test_an_unreachable_store_still_answers_with_the_error(
    store: VectorStore, retriever: Retriever
) -> None:
    broken = VectorStore.open(Settings(), store.name)
    broken.client.close()
    request = RetrievalRequested(tenant_id="acme", user_id="ada", query="refunds")
    answer = await retriever_app.answer(Retriever(broken, retriever.embedder, retriever.settings), request)
    assert answer.passages == [] and answer.error and "vector store unavailable" in answer.error
    assert answer.causation_id == request.event_id and answer.user_id == "ada"


async def test_both_services_run_as_serve_runs_them(tmp_path: Path, store: VectorStore) -> None:
    """`run(settings, host, port)` of each service, until cancelled (`loraswarm serve all`)."""
    settings = isolated_settings("memory", tmp_path)
    settings.retrieval.collection = store.name
    services = [
        asyncio.create_task(module.run(settings, host="127.0.0.1", port=0))
        for module in (ingestion, retriever_app)
    ]
    client = EventBus(settings, service="test-client")
    indexed: list[DocumentsIndexed] = []
    completed: list[RetrievalCompleted] = []

    @client.consumer(DocumentsIndexed, group="test-watch")
    async def on_indexed(event: DocumentsIndexed) -> None:
        indexed.append(event)

    @client.consumer(RetrievalCompleted, group="test-watch")
    async def on_completed(event: RetrievalCompleted) -> None:
        completed.append(event)

    async def until_answered(event: Envelope, answers: list[Any]) -> None:
        # The services start on their own time; sending the same event again is harmless (each
        # consumer handles an event_id once), so send until it is answered.
        for _ in range(240):
            await client.publish(event)
            with contextlib.suppress(AssertionError):
                await until(lambda: bool(answers), timeout_s=0.5)
                return
        raise AssertionError(f"no answer to {event.type}")

    try:
        async with client:
            await until_answered(
                DocumentsSubmitted(
                    tenant_id="acme", documents=[doc("a.md", "# Kayaks\n\nSea kayaks for rent.")]
                ),
                indexed,
            )
            await until_answered(RetrievalRequested(tenant_id="acme", query="kayak"), completed)
    finally:
        for task in services:
            task.cancel()
        await asyncio.gather(*services, return_exceptions=True)
    assert indexed[0].doc_ids == ["a.md"]
    assert [p.citation.doc_id for p in completed[0].passages] == ["a.md"]
    assert all(task.cancelled() for task in services)
