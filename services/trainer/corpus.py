"""The tenant's ingested documents, as training text: `TrainingCorpus` and its Weaviate implementation.

The trainer reads chunks the ingestion service indexed (continued pre-training on the tenant's
own text). Scoping is done by the store: one tenant's shard, one visibility (`company` or
`user:<id>`) — never both, never another tenant's shard (`shared/retrieval.chunks_in_scope`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from loraswarm.services.trainer.errors import Unavailable
from loraswarm.services.trainer.scope import Scope
from loraswarm.shared.settings import Settings


@dataclass(frozen=True)
class CorpusChunk:
    doc_id: str
    position: int
    version: str  # content hash of the document the chunk was cut from
    visibility: str
    text: str


class TrainingCorpus(Protocol):
    """Where a tenant's documents come from."""

    def has_tenant(self, tenant_id: str) -> bool:
        """Whether the tenant has ingested anything."""
        ...

    def chunks(self, scope: Scope, sources: Sequence[str] = ()) -> Iterator[CorpusChunk]:
        """Every chunk of exactly this scope (optionally only from these sources)."""
        ...


class VectorStoreCorpus:
    """Chunks from the tenant's shard of the Weaviate collection that ingestion writes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def has_tenant(self, tenant_id: str) -> bool:
        from loraswarm.shared import vectorstore

        try:
            return vectorstore.shared_store(self.settings).has_tenant(tenant_id)
        except vectorstore.VectorStoreError as exc:
            raise Unavailable(f"cannot read the tenant's documents: {exc}") from exc

    def chunks(self, scope: Scope, sources: Sequence[str] = ()) -> Iterator[CorpusChunk]:
        from loraswarm.shared import retrieval, vectorstore

        try:
            for chunk in retrieval.chunks_in_scope(self.settings, scope.tenant_id, scope.user_id, sources):
                # The store filters by scope; checking again costs nothing and keeps a store bug
                # from ever turning into a privacy bug.
                if chunk.visibility != scope.visibility:
                    raise RuntimeError(
                        f"the vector store returned a {chunk.visibility!r} chunk for scope {scope}"
                    )
                yield CorpusChunk(chunk.doc_id, chunk.position, chunk.version, chunk.visibility, chunk.text)
        except vectorstore.VectorStoreError as exc:
            raise Unavailable(f"cannot read the tenant's documents: {exc}") from exc
