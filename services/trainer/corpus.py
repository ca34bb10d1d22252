"""The tenant's ingested documents, as training text: `TrainingCorpus` and its Weaviate implementation.

The trainer reads chunks the ingestion service indexed (continued pre-training on the tenant's
own text). Which scopes a job reads is decided once, by `scope.data_scopes`; each is then read
from the store: one tenant's shard, one visibility (`company` or `user:<id>`) — never another
tenant's shard (`shared/retrieval.chunks_in_scope`).

`scope_canaries` walks the very same `data_scopes` to find the canary sets to plant: whatever
scopes a job's documents come from, their canaries come along (shared/canaries.py says why).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from loraswarm.services.trainer.errors import Unavailable
from loraswarm.services.trainer.scope import Scope, data_scopes
from loraswarm.shared.canaries import CanarySet, CanaryStore
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

    def users_with_data(self, tenant_id: str) -> list[str]:
        """Users with private chunks in the tenant's shard."""
        ...


def scope_canaries(store: CanaryStore, scope: Scope) -> list[CanarySet]:
    """The canary sets of every scope a job of `scope` reads (`data_scopes`, as for documents)."""
    found = (store.get(s.tenant_id, s.user_id) for s in data_scopes(scope))
    return [c for c in found if c is not None]


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
            for read in data_scopes(scope):
                for chunk in retrieval.chunks_in_scope(self.settings, read.tenant_id, read.user_id, sources):
                    # The store filters by scope; checking again costs nothing and keeps a store
                    # bug from ever turning into a privacy bug.
                    if chunk.visibility != read.visibility:
                        raise RuntimeError(
                            f"the vector store returned a {chunk.visibility!r} chunk for scope {read}"
                        )
                    yield CorpusChunk(
                        chunk.doc_id, chunk.position, chunk.version, chunk.visibility, chunk.text
                    )
        except vectorstore.VectorStoreError as exc:
            raise Unavailable(f"cannot read the tenant's documents: {exc}") from exc

    def users_with_data(self, tenant_id: str) -> list[str]:
        from loraswarm.shared import vectorstore

        try:
            seen = vectorstore.shared_store(self.settings).visibilities(tenant_id)
        except vectorstore.VectorStoreError as exc:
            raise Unavailable(f"cannot read the tenant's documents: {exc}") from exc
        prefix = "user:"
        return sorted(v[len(prefix) :] for v in seen if v.startswith(prefix))
