"""Retriever — consumes `retrieval.requested`; produces `retrieval.completed`; talks to Weaviate
(hybrid BM25 + vector search in the requesting tenant's shard only).

Passages reach a user only from their own company's shard, and private (`user:<id>`) chunks only
their owner (`vectorstore.VectorStore.hybrid`). When the vector store cannot be reached the
request still gets its answer — no passages, and the error — so the planner need not wait for
its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time

from weaviate.exceptions import WeaviateBaseError

from loraswarm.shared.bus import EventBus
from loraswarm.shared.embeddings import load_embedder
from loraswarm.shared.events import RetrievalCompleted, RetrievalRequested
from loraswarm.shared.retrieval import Retriever
from loraswarm.shared.settings import Settings
from loraswarm.shared.tracing import configure_tracing
from loraswarm.shared.vectorstore import VectorStore, VectorStoreError

log = logging.getLogger("loraswarm.retriever")

GROUP = "retriever"


async def answer(retriever: Retriever, request: RetrievalRequested) -> RetrievalCompleted:
    started = time.perf_counter()
    try:
        passages = await asyncio.to_thread(
            retriever.search,
            request.tenant_id,
            request.query,
            user_id=request.user_id,
            k=request.k,
            alpha=request.alpha,
            sources=request.sources,
        )
        error = None
    except (VectorStoreError, WeaviateBaseError) as exc:
        log.warning("retrieval for %s failed: %s", request.tenant_id, exc)
        passages, error = [], f"vector store unavailable: {exc}"
    return request.caused(
        RetrievalCompleted,
        passages=passages,
        duration_ms=(time.perf_counter() - started) * 1000,
        error=error,
    )


def build(settings: Settings, retriever: Retriever) -> EventBus:
    bus = EventBus(settings, service="retriever")

    @bus.consumer(RetrievalRequested, group=GROUP, concurrency=settings.retrieval.concurrency)
    async def on_request(request: RetrievalRequested) -> None:
        """Hybrid search in the tenant's shard over what the user may see."""
        await bus.publish(await answer(retriever, request))

    return bus


async def run(settings: Settings, *, host: str, port: int) -> None:
    configure_tracing("retriever", settings.tracing)
    store = await asyncio.to_thread(VectorStore.open, settings)
    try:
        embedder = await asyncio.to_thread(load_embedder, settings)
        async with build(settings, Retriever(store, embedder, settings.retrieval)):
            await asyncio.Event().wait()
    finally:
        store.close()
