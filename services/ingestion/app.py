"""Ingestion — consumes `documents.submitted`; produces `documents.indexed` and `documents.failed`;
talks to Weaviate (one tenant = one shard) and the embedding model.

A submission may index some documents and fail others: both events are emitted, each failure
with its reason. The vector store being down is not a document's fault: the handler raises, and
the consumer policy retries the submission, then dead-letters it.
"""

from __future__ import annotations

import asyncio

from loraswarm.services.ingestion.pipeline import Indexer, IndexReport
from loraswarm.shared.bus import EventBus
from loraswarm.shared.embeddings import load_embedder
from loraswarm.shared.envelope import Envelope
from loraswarm.shared.events import DocumentsFailed, DocumentsIndexed, DocumentsSubmitted
from loraswarm.shared.secrets import DocumentSecrets
from loraswarm.shared.settings import Settings
from loraswarm.shared.tracing import configure_tracing
from loraswarm.shared.vectorstore import VectorStore

GROUP = "ingestion"
FAILURES_PER_EVENT = 500  # keeps a documents.failed event far below Kafka's message limit


def outcome_events(submitted: DocumentsSubmitted, report: IndexReport) -> list[Envelope]:
    """`documents.indexed` for what is in the shard now, `documents.failed` for each reason."""
    events: list[Envelope] = []
    if report.indexed:
        events.append(
            submitted.caused(
                DocumentsIndexed,
                doc_ids=report.indexed,
                chunks=report.chunks,
                duration_ms=report.timings_ms.get("total", 0.0),
                unchanged_doc_ids=report.unchanged,
                timings_ms=report.timings_ms,
            )
        )
    for i in range(0, len(report.failures), FAILURES_PER_EVENT):
        events.append(
            submitted.caused(
                DocumentsFailed,
                index=i // FAILURES_PER_EVENT,
                failures=report.failures[i : i + FAILURES_PER_EVENT],
            )
        )
    return events


def build(settings: Settings, indexer: Indexer) -> EventBus:
    bus = EventBus(settings, service="ingestion")

    @bus.consumer(DocumentsSubmitted, group=GROUP)
    async def on_documents(event: DocumentsSubmitted) -> None:
        """Parse, chunk, embed and upsert the documents into the tenant's shard."""
        report = await asyncio.to_thread(indexer.index, event.tenant_id, event.documents)
        await bus.publish_many(outcome_events(event, report))

    return bus


async def run(settings: Settings, *, host: str, port: int) -> None:
    configure_tracing("ingestion", settings.tracing)
    store = await asyncio.to_thread(VectorStore.open, settings)
    try:
        embedder = await asyncio.to_thread(load_embedder, settings)
        secrets = DocumentSecrets.under(settings.data_dir)
        async with build(settings, Indexer(store, embedder, settings.retrieval, secrets=secrets)):
            await asyncio.Event().wait()
    finally:
        store.close()
