"""Weaviate, the one vector store: the chunk collection and tenant-scoped access to it.

Layout: one collection (`settings.retrieval.collection`) with multi-tenancy on, one Weaviate
tenant — one shard — per company. A chunk's object id is derived from (tenant, doc_id,
position), so writing a document again overwrites its objects instead of adding copies, and every
chunk carries its document's `version` (a content hash), so the chunks an edit left behind can be
found and removed. Vectors are provided by us (`embeddings.py`), never by a Weaviate module.

Privacy is enforced here, not by callers: every read names a tenant (so it only touches that
tenant's shard) and a user (so `user:<id>` chunks reach only their owner).

The connection and its errors are in `weaviate_connection.py` (re-exported here: callers of the
store catch them), the chunk record in `chunks.py`, search over the store in `retrieval.py`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from loraswarm.shared.chunks import (
    COMPANY,
    RETURNED_PROPERTIES,
    ChunkRecord,
    Hit,
    chunk_uuid,
    user_visibility,
    weaviate_properties,
)
from loraswarm.shared.settings import Settings
from loraswarm.shared.weaviate_connection import (
    VectorStoreError,
    VectorStoreUnavailable,
    WriteFailed,
    connect,
    db_span,
    tenant_missing,
    weaviate_errors,
)

# ---------------------------------------------------------------- the collection


class _NoShard(Exception):
    """The tenant has no shard (never ingested, or deleted meanwhile by another process)."""


class VectorStore:
    """The chunk collection, read and written one tenant (one shard) at a time.

    Reads of a tenant without a shard return nothing: a company that has not ingested anything
    yet, or whose shard another process just deleted, has no chunks — not an error.
    """

    def __init__(self, client: Any, collection: str, *, owns_client: bool = True) -> None:
        self.client = client
        self.name = collection
        self.owns_client = owns_client
        self._tenants: set[str] = set()  # shards this store created or wrote to
        self._lock = threading.Lock()
        with weaviate_errors(f"opening collection {collection}"):
            self.ensure_collection()
            self.collection = client.collections.use(collection)

    @classmethod
    def open(cls, settings: Settings, collection: str | None = None) -> VectorStore:
        return cls(connect(settings), collection or settings.retrieval.collection)

    def close(self) -> None:
        if self.owns_client:
            self.client.close()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ schema and tenants

    def ensure_collection(self) -> None:
        from weaviate.classes.config import Configure
        from weaviate.exceptions import UnexpectedStatusCodeError

        if self.client.collections.exists(self.name):
            config = self.client.collections.use(self.name).config.get()
            if not config.multi_tenancy_config.enabled:
                raise VectorStoreError(
                    f"collection {self.name} exists without multi-tenancy; loraswarm keeps one "
                    "tenant per company in it. Use another LORASWARM_RETRIEVAL__COLLECTION."
                )
            return
        try:
            self.client.collections.create(
                self.name,
                description="loraswarm: chunks of every company's documents, one tenant (shard) each.",
                multi_tenancy_config=Configure.multi_tenancy(enabled=True, auto_tenant_creation=False),
                vector_config=Configure.Vectors.self_provided(),
                properties=weaviate_properties(),
            )
        except UnexpectedStatusCodeError as exc:
            if "already exists" not in str(exc):  # another service created it a moment ago
                raise

    def tenants(self) -> list[str]:
        with weaviate_errors("listing tenants"):
            return sorted(self.collection.tenants.get())

    def has_tenant(self, tenant_id: str) -> bool:
        with weaviate_errors(f"looking up tenant {tenant_id}"):
            return self.collection.tenants.get_by_name(tenant_id) is not None

    def ensure_tenant(self, tenant_id: str) -> None:
        from weaviate.classes.tenants import Tenant
        from weaviate.exceptions import WeaviateBaseError

        with self._lock:
            if tenant_id in self._tenants:
                return
            with weaviate_errors(f"creating tenant {tenant_id}"):
                if self.collection.tenants.get_by_name(tenant_id) is None:
                    try:
                        self.collection.tenants.create([Tenant(name=tenant_id)])
                    except WeaviateBaseError as exc:
                        if "already exists" not in str(exc):  # another writer created it
                            raise
            self._tenants.add(tenant_id)

    def delete_tenant(self, tenant_id: str) -> bool:
        """Remove the tenant's shard and everything in it. False when there was none."""
        with self._lock, weaviate_errors(f"deleting tenant {tenant_id}"):
            self._tenants.discard(tenant_id)
            if self.collection.tenants.get_by_name(tenant_id) is None:
                return False
            self.collection.tenants.remove([tenant_id])
            return True

    def _shard(self, tenant_id: str) -> Any:
        return self.collection.with_tenant(tenant_id)

    @contextmanager
    def _reading(self, tenant_id: str, what: str, operation: str | None) -> Iterator[None]:
        """One traced call on a shard (`operation` None: untraced): "tenant not found" becomes
        `_NoShard`, other failures `VectorStoreError`."""
        from weaviate.exceptions import WeaviateBaseError

        span = db_span(operation, self.name, tenant_id) if operation else contextlib.nullcontext()
        try:
            with span, weaviate_errors(f"{what} in {tenant_id}"):
                try:
                    yield
                except WeaviateBaseError as exc:
                    if tenant_missing(exc):
                        self._tenants.discard(tenant_id)
                        raise _NoShard(tenant_id) from exc
                    raise
        except VectorStoreError as exc:
            if tenant_missing(exc):
                self._tenants.discard(tenant_id)
                raise _NoShard(tenant_id) from exc
            raise

    # ------------------------------------------------------------------ writes

    def upsert(self, tenant_id: str, chunks: Sequence[ChunkRecord], vectors: Any) -> int:
        """Write chunks with their vectors (N, D); objects with the same id are replaced."""
        from weaviate.classes.data import DataObject

        assert len(chunks) == len(vectors), "one vector per chunk"
        if not chunks:
            return 0
        objects = [
            DataObject(
                properties=chunk.properties(),
                uuid=chunk_uuid(tenant_id, chunk.doc_id, chunk.position),
                vector=[float(x) for x in vector],
            )
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        for attempt in (1, 2):
            self.ensure_tenant(tenant_id)
            try:
                with self._reading(tenant_id, "writing chunks", "insert_many"):
                    result = self._shard(tenant_id).data.insert_many(objects)
                    if result.errors and all(tenant_missing(e.message) for e in result.errors.values()):
                        raise _NoShard(tenant_id)
            except _NoShard:
                if attempt == 2:
                    raise VectorStoreError(f"tenant {tenant_id} vanished twice while being written") from None
                continue  # deleted by another process since we created it: create it again
            break
        if result.errors:
            reasons = "; ".join(
                f"{chunks[i].doc_id}#{chunks[i].position}: {err.message}"
                for i, err in list(result.errors.items())[:3]
            )
            raise WriteFailed(f"Weaviate rejected {len(result.errors)} of {len(chunks)} chunks: {reasons}")
        return len(objects)

    def delete_stale(self, tenant_id: str, current: dict[str, str]) -> int:
        """Delete the chunks of each parent document whose version is not its current one."""
        from weaviate.classes.query import Filter

        if not current:
            return 0
        where = Filter.any_of(
            [
                Filter.by_property("parent_id").equal(parent) & Filter.by_property("version").not_equal(v)
                for parent, v in current.items()
            ]
        )
        return self._delete(tenant_id, where)

    def delete_except(self, tenant_id: str, parent_ids: Sequence[str]) -> int:
        """Delete the tenant's chunks of every document but `parent_ids`."""
        from weaviate.classes.query import Filter

        if not parent_ids:
            raise VectorStoreError("name the documents to keep (to delete them all, delete the tenant)")
        return self._delete(
            tenant_id, Filter.all_of([Filter.by_property("parent_id").not_equal(p) for p in parent_ids])
        )

    def delete(
        self,
        tenant_id: str,
        *,
        doc_id: str | None = None,
        source: str | None = None,
        user_id: str | None = None,
    ) -> int:
        """Delete a document (or a file's records), a source, or a user's private chunks."""
        from weaviate.classes.query import Filter

        conditions = []
        if doc_id is not None:
            conditions.append(
                Filter.any_of(
                    [
                        Filter.by_property("doc_id").equal(doc_id),
                        Filter.by_property("parent_id").equal(doc_id),
                    ]
                )
            )
        if source is not None:
            conditions.append(Filter.by_property("source").equal(source))
        if user_id is not None:
            conditions.append(Filter.by_property("visibility").equal(user_visibility(user_id)))
        if not conditions:
            raise VectorStoreError("name what to delete: a doc_id, a source or a user (or delete the tenant)")
        return self._delete(tenant_id, Filter.all_of(conditions))

    def _delete(self, tenant_id: str, where: Any) -> int:
        # delete_many removes at most QUERY_MAXIMUM_RESULTS objects per call: repeat until done.
        total = 0
        try:
            while True:
                with self._reading(tenant_id, "deleting chunks", "delete_many"):
                    result = self._shard(tenant_id).data.delete_many(where=where)
                total += int(result.successful)
                if result.failed:
                    raise WriteFailed(f"Weaviate failed to delete {result.failed} objects of {tenant_id}")
                if result.matches == 0 or result.successful == 0:
                    return total
        except _NoShard:
            return total

    # ------------------------------------------------------------------ reads

    def count(self, tenant_id: str, *, parent_id: str | None = None) -> int:
        from weaviate.classes.query import Filter

        where = Filter.by_property("parent_id").equal(parent_id) if parent_id is not None else None
        try:
            with self._reading(tenant_id, "counting chunks", "aggregate"):
                result = self._shard(tenant_id).aggregate.over_all(total_count=True, filters=where)
        except _NoShard:
            return 0
        return int(result.total_count or 0)

    def counts_by_parent(
        self, tenant_id: str, parent_ids: Sequence[str], versions: Sequence[str] | None = None
    ) -> dict[str, int]:
        """How many chunks each parent document has (only those at one of `versions`, if given)."""
        from weaviate.classes.aggregate import GroupByAggregate
        from weaviate.classes.query import Filter

        if not parent_ids:
            return {}
        where = Filter.by_property("parent_id").contains_any(list(parent_ids))
        if versions is not None:
            where = where & Filter.by_property("version").contains_any(list(versions))
        try:
            with self._reading(tenant_id, "counting chunks", "aggregate"):
                result = self._shard(tenant_id).aggregate.over_all(
                    group_by=GroupByAggregate(prop="parent_id", limit=len(parent_ids)),
                    total_count=True,
                    filters=where,
                )
        except _NoShard:
            return {}
        return {str(g.grouped_by.value): int(g.total_count or 0) for g in result.groups}

    def visibilities(self, tenant_id: str) -> set[str]:
        """The distinct visibilities of a tenant's chunks (`company`, `user:<id>`, ...)."""
        from weaviate.classes.aggregate import GroupByAggregate

        try:
            with self._reading(tenant_id, "counting chunks", "aggregate"):
                result = self._shard(tenant_id).aggregate.over_all(
                    group_by=GroupByAggregate(prop="visibility", limit=10_000), total_count=True
                )
        except _NoShard:
            return set()
        return {str(g.grouped_by.value) for g in result.groups}

    def hybrid(
        self,
        tenant_id: str,
        query: str,
        vector: Sequence[float] | None,
        *,
        user_id: str | None,
        k: int,
        alpha: float,
        sources: Sequence[str] = (),
    ) -> list[Hit]:
        """BM25 + vector search in the tenant's shard, over what `user_id` may see.

        `alpha` 0 is BM25 only, 1 vector only (relative-score fusion in between). Company chunks
        are visible to everyone in the tenant; `user:<id>` chunks to that user alone.
        """
        from weaviate.classes.query import Filter, MetadataQuery

        visible = [Filter.by_property("visibility").equal(COMPANY)]
        if user_id:
            visible.append(Filter.by_property("visibility").equal(user_visibility(user_id)))
        where = Filter.any_of(visible) if len(visible) > 1 else visible[0]
        if sources:
            where = where & Filter.by_property("source").contains_any(list(sources))
        try:
            with self._reading(tenant_id, "searching", "hybrid"):
                result = self._shard(tenant_id).query.hybrid(
                    query=query,
                    vector=list(vector) if vector is not None else None,
                    alpha=alpha,
                    limit=k,
                    filters=where,
                    query_properties=["text", "title"],
                    return_properties=RETURNED_PROPERTIES,
                    return_metadata=MetadataQuery(score=True),
                )
        except _NoShard:
            return []  # a company that has ingested nothing (yet, or any more)
        return [
            Hit(ChunkRecord.from_properties(o.properties), float(o.metadata.score or 0.0))
            for o in result.objects
        ]

    def chunks(
        self, tenant_id: str, *, scope: Literal["company"] | str = COMPANY, sources: Sequence[str] = ()
    ) -> Iterator[ChunkRecord]:
        """Every chunk of one visibility scope of a tenant, in storage order.

        `scope` is `company` (what company-wide adapters may learn from) or `user:<id>` (one
        user's private chunks, for that user's adapter only); the two never mix.
        """
        wanted = set(sources)
        try:
            # Untraced: a current span must not stay open across the yields below.
            with self._reading(tenant_id, "reading chunks", None):
                # The cursor API takes no filters; one shard streams fast, so filter here.
                for obj in self._shard(tenant_id).iterator(return_properties=RETURNED_PROPERTIES):
                    chunk = ChunkRecord.from_properties(obj.properties)
                    if chunk.visibility == scope and (not wanted or chunk.source in wanted):
                        yield chunk
        except _NoShard:
            return


_shared: dict[str, Any] = {}
_shared_lock = threading.Lock()


def shared_store(settings: Settings) -> VectorStore:
    """This process's connection to the chunk collection for these settings (opened once)."""
    key = "store:" + settings.retrieval.model_dump_json()
    with _shared_lock:
        if key not in _shared:
            _shared[key] = VectorStore.open(settings)
        return _shared[key]  # type: ignore[no-any-return]


def close_shared() -> None:
    """Close this process's shared connections (before an embedded Weaviate stops at exit, so that
    neither the client nor its sockets are left to the garbage collector's warnings)."""
    with _shared_lock:
        stores = [v for v in _shared.values() if isinstance(v, VectorStore)]
        _shared.clear()
    for store in stores:
        store.close()


__all__ = [
    "VectorStore",
    "VectorStoreError",
    "VectorStoreUnavailable",
    "WriteFailed",
    "close_shared",
    "shared_store",
]
