"""Index a batch of documents into one tenant's shard: parse, chunk, embed, upsert.

Per document, in order:

1. parse and chunk it (`parsing`, `records`, `chunking`); a document that cannot be read is a
   failure with its reason and the rest of the batch goes on;
2. note the secrets it declares (`secrets:` in its metadata or front matter) for the output
   guardrail of its scope (shared/secrets.py), before any of its chunks is retrievable;
3. skip it when its shard already holds exactly this version (a content hash over the bytes and
   everything that shapes its chunks), so re-ingesting unchanged files costs no embedding;
4. embed its chunks in batches and upsert them under deterministic ids (tenant, doc, position),
   the next batch embedding while the last one is written;
5. delete what an older version left behind (chunks of the document at another version).

A crash between 4 and 5 leaves both versions' chunks until the document is submitted again,
which the consumer policy does: the event is redelivered, and every step is idempotent.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from loraswarm.services.ingestion.chunking import chunk_sections
from loraswarm.services.ingestion.parsing import Unparseable, media_type_of, parse, raw_bytes
from loraswarm.shared.chunks import ChunkRecord
from loraswarm.shared.embeddings import Embedder
from loraswarm.shared.events import Document, DocumentFailure
from loraswarm.shared.secrets import DocumentSecrets, declared_in
from loraswarm.shared.settings import RetrievalSettings
from loraswarm.shared.vectorstore import VectorStore


@dataclass
class IndexReport:
    """What one batch did; `indexed` and `unchanged` hold submitted doc ids."""

    indexed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failures: list[DocumentFailure] = field(default_factory=list)
    chunks: int = 0  # chunks written (unchanged documents write none)
    records: int = 0  # indexable documents found (a CSV of 10 rows: 10)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def add(self, other: IndexReport) -> None:
        self.indexed += other.indexed
        self.unchanged += other.unchanged
        self.failures += other.failures
        self.chunks += other.chunks
        self.records += other.records
        for stage, ms in other.timings_ms.items():
            self.timings_ms[stage] = self.timings_ms.get(stage, 0.0) + ms


@dataclass
class _Prepared:
    document: Document
    version: str
    chunks: list[ChunkRecord]
    secrets: list[str] = field(default_factory=list)


def document_version(document: Document, settings: RetrievalSettings, embedder: str) -> str:
    """A hash of everything that decides a document's chunks and vectors."""
    digest = hashlib.sha256(raw_bytes(document))
    shape = {
        "doc_id": document.doc_id,
        "media": media_type_of(document),
        "title": document.title,
        "source": document.source,
        "visibility": document.visibility,
        "metadata": document.metadata,
        "template": settings.record_template,
        "id_field": settings.record_id_field,
        "title_field": settings.record_title_field,
        "chunk": [settings.chunk_tokens, settings.chunk_overlap],
        "embedder": embedder,
    }
    digest.update(json.dumps(shape, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def document_secrets(document: Document) -> list[str]:
    """What the document declares secret: `secrets` in its metadata, or in a Markdown document's
    YAML front matter (`secrets: [...]`); `Unparseable` says what is malformed."""
    metadata = dict(document.metadata)
    if "secrets" not in metadata and media_type_of(document)[0] == "text/markdown":
        metadata |= _front_matter(document)
    try:
        return declared_in(metadata)
    except ValueError as exc:
        raise Unparseable(str(exc)) from exc


def _front_matter(document: Document) -> dict[str, Any]:
    import yaml

    text = raw_bytes(document).decode("utf-8", errors="replace")
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            try:
                data = yaml.safe_load("\n".join(lines[1:end]))
            except yaml.YAMLError as exc:
                raise Unparseable(f"the front matter is not valid YAML: {exc}") from exc
            return data if isinstance(data, dict) else {}
    return {}


class Indexer:
    """Indexes documents for the ingestion service, the CLI and benchmarks."""

    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        settings: RetrievalSettings,
        *,
        secrets: DocumentSecrets | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings
        # Where the secrets documents declare go, for the planner's output guardrail; None
        # (benchmarks, tools that only build an index) keeps none.
        self.secrets = secrets
        # The tokenizer and the model both add [CLS]/[SEP]-like tokens: leave room for them.
        self.max_tokens = max(16, min(settings.chunk_tokens, embedder.max_tokens - 2))

    def prepare(self, document: Document) -> tuple[_Prepared | None, list[DocumentFailure]]:
        """Parse and chunk one document; never raises for a bad document."""
        try:
            parsed, failed = parse(document, self.settings)
            version = document_version(document, self.settings, self.embedder.name)
            secrets = document_secrets(document)
        except Unparseable as exc:
            return None, [DocumentFailure(doc_id=document.doc_id, reason=str(exc))]
        except Exception as exc:  # a parser bug must not take the batch down with it
            reason = f"could not be parsed ({type(exc).__name__}: {exc})"
            return None, [DocumentFailure(doc_id=document.doc_id, reason=reason)]
        failures = [DocumentFailure(doc_id=d, reason=r) for d, r in failed]
        chunks: list[ChunkRecord] = []
        for unit in parsed:
            for position, chunk in enumerate(
                chunk_sections(
                    self.embedder.tokenizer, unit.sections, self.max_tokens, self.settings.chunk_overlap
                )
            ):
                chunks.append(
                    ChunkRecord(
                        doc_id=unit.doc_id,
                        parent_id=document.doc_id,
                        source=document.source,
                        title=unit.title,
                        visibility=document.visibility,
                        heading=chunk.heading,
                        text=chunk.text,
                        position=position,
                        version=version,
                        media_type=media_type_of(document)[0],
                        metadata=unit.metadata or document.metadata,
                    )
                )
        if not chunks:
            if not failures:
                failures = [DocumentFailure(doc_id=document.doc_id, reason="no text to index")]
            return None, failures
        return _Prepared(document, version, chunks, secrets), failures

    def index(self, tenant_id: str, documents: Sequence[Document]) -> IndexReport:
        report = IndexReport()
        started = time.perf_counter()
        # A document submitted twice in one batch: the last copy wins.
        latest = {d.doc_id: d for d in documents}
        prepared: list[_Prepared] = []
        for document in latest.values():
            ready, failures = self.prepare(document)
            report.failures += failures
            if ready is not None:
                prepared.append(ready)
                report.records += len({c.doc_id for c in ready.chunks})
        parsed_at = time.perf_counter()

        current = self._current(tenant_id, prepared)
        changed = [p for p in prepared if p.document.doc_id not in current]
        report.unchanged = [p.document.doc_id for p in prepared if p.document.doc_id in current]
        checked_at = time.perf_counter()

        if self.secrets is not None:
            # Before the chunks are retrievable, so no answer can quote a secret the guardrail
            # does not know yet.
            for p in prepared:
                self.secrets.record(tenant_id, p.document.visibility, p.document.doc_id, p.secrets)
        embed_s, write_wait_s = self._write(tenant_id, [c for p in changed for c in p.chunks])
        report.chunks = sum(len(p.chunks) for p in changed)
        removed_at = time.perf_counter()
        self.store.delete_stale(tenant_id, {p.document.doc_id: p.version for p in changed})
        done = time.perf_counter()

        report.indexed = [p.document.doc_id for p in prepared]
        report.timings_ms = {
            "parse": (parsed_at - started) * 1000,
            "check": (checked_at - parsed_at) * 1000,
            "embed": embed_s * 1000,
            "write_wait": write_wait_s * 1000,
            "delete_stale": (done - removed_at) * 1000,
            "total": (done - started) * 1000,
        }
        return report

    def _current(self, tenant_id: str, prepared: Sequence[_Prepared]) -> set[str]:
        """Documents whose shard holds exactly their chunks at this version, nothing more."""
        if not prepared:
            return set()
        parents = [p.document.doc_id for p in prepared]
        total = self.store.counts_by_parent(tenant_id, parents)
        if not total:
            return set()
        at_version = self.store.counts_by_parent(tenant_id, parents, [p.version for p in prepared])
        return {
            p.document.doc_id
            for p in prepared
            if total.get(p.document.doc_id) == at_version.get(p.document.doc_id) == len(p.chunks)
        }

    def _write(self, tenant_id: str, chunks: list[ChunkRecord]) -> tuple[float, float]:
        """Embed and upsert in batches, writing one batch while embedding the next."""
        if not chunks:
            return 0.0, 0.0
        size = self.settings.upsert_batch_size
        embed_s = wait_s = 0.0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="upsert") as writer:
            pending: Future[int] | None = None
            for i in range(0, len(chunks), size):
                batch = chunks[i : i + size]
                t0 = time.perf_counter()
                vectors = self.embedder.encode([c.text for c in batch])  # (B, D)
                t1 = time.perf_counter()
                embed_s += t1 - t0
                if pending is not None:
                    pending.result()  # surfaces a write error before more work is queued
                    wait_s += time.perf_counter() - t1
                # The writer thread continues the caller's trace (pools do not carry contextvars).
                context = contextvars.copy_context()
                pending = writer.submit(context.run, self.store.upsert, tenant_id, batch, vectors)
            if pending is not None:
                t2 = time.perf_counter()
                pending.result()
                wait_s += time.perf_counter() - t2
        return embed_s, wait_s
