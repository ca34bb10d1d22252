"""Search over the vector store: the library API that planner, specialists and trainer call.

`search` is tenant- and user-scoped hybrid search returning the `Passage`s events carry;
`chunks_in_scope` is the trainer's read of one scope's chunks. Both go through this process's
shared store and embedder (`retriever(settings)`), opened once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from loraswarm.shared.chunks import COMPANY, ChunkRecord, Hit, user_visibility
from loraswarm.shared.embeddings import Embedder, load_embedder
from loraswarm.shared.events import Citation, Passage
from loraswarm.shared.settings import RetrievalSettings, Settings
from loraswarm.shared.vectorstore import VectorStore, shared_store

_retrievers: dict[str, Retriever] = {}
_retrievers_lock = threading.Lock()


class Retriever:
    """Tenant-scoped hybrid search, returning the `Passage`s that events and prompts carry."""

    def __init__(self, store: VectorStore, embedder: Embedder, settings: RetrievalSettings) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings

    def search(
        self,
        tenant_id: str,
        query: str,
        *,
        user_id: str | None = None,
        k: int | None = None,
        alpha: float | None = None,
        sources: Sequence[str] = (),
    ) -> list[Passage]:
        vector = self.embedder.encode_queries([query])[0]  # (D,)
        hits = self.store.hybrid(
            tenant_id,
            query,
            vector.tolist(),
            user_id=user_id,
            k=k or self.settings.default_k,
            alpha=self.settings.default_alpha if alpha is None else alpha,
            sources=sources,
        )
        return [passage_of(hit) for hit in hits]


def passage_of(hit: Hit) -> Passage:
    chunk = hit.chunk
    return Passage(
        text=chunk.text,
        score=hit.score,
        citation=Citation(
            doc_id=chunk.doc_id, source=chunk.source, title=chunk.title, position=chunk.position
        ),
    )


def retriever(settings: Settings) -> Retriever:
    """This process's `Retriever` for these settings (connected and loaded once, then shared)."""
    key = "retriever:" + settings.retrieval.model_dump_json() + settings.device
    store = shared_store(settings)
    embedder = load_embedder(settings)
    with _retrievers_lock:
        cached = _retrievers.get(key)
        if cached is None or cached.store is not store:  # a new store after `close_shared()`
            cached = _retrievers[key] = Retriever(store, embedder, settings.retrieval)
        return cached


def search(
    settings: Settings,
    tenant_id: str,
    user_id: str | None,
    query: str,
    k: int | None = None,
    alpha: float | None = None,
    sources: Sequence[str] = (),
) -> list[Passage]:
    """Hybrid search over what `user_id` may see in `tenant_id`'s data (for planner and specialists).

    Company chunks and the user's own private chunks; never another tenant's shard, never another
    user's private chunks.
    """
    return retriever(settings).search(tenant_id, query, user_id=user_id, k=k, alpha=alpha, sources=sources)


def chunks_in_scope(
    settings: Settings, tenant_id: str, user_id: str | None = None, sources: Sequence[str] = ()
) -> Iterator[ChunkRecord]:
    """Training data for the trainer: a tenant's company-visible chunks (`user_id` None), or one
    user's private chunks only (`user_id` given) — never both, so a company adapter learns
    nothing private and a user's adapter nothing of another user."""
    scope = user_visibility(user_id) if user_id else COMPANY
    return shared_store(settings).chunks(tenant_id, scope=scope, sources=sources)


__all__ = [
    "Retriever",
    "chunks_in_scope",
    "load_embedder",  # re-exported: the library API's callers need the model too
    "passage_of",
    "retriever",
    "search",
]
