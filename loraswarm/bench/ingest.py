"""`loraswarm bench ingest`: ingestion throughput against bare embedding, and query latency at scale.

Three measurements on the real local Weaviate and the real embedding model, in one run, in a
collection of their own that is deleted at the end:

1. **Ingest throughput.** Synthetic Markdown documents (headings, paragraphs) go through the whole
   pipeline (`Indexer.index`: parse, chunk, embed, upsert, stale-chunk check) in batches as the
   CLI sends them. The baseline is bare `embedder.encode` of exactly the same chunk texts with the
   same batch size, measured right before and right after (this machine is shared, so the two
   baselines bracket the run). Goal: pipeline chunks/s ≥ 0.8 × bare embedding chunks/s.
2. **Query latency at scale.** `tenants` × `chunks_per_tenant` chunks, 10 % of them private to one
   of five users. Embedding that many chunks on a CPU takes hours, so their texts are drawn from a
   pool of `pool` distinct texts that *are* embedded with the model, and each chunk's vector is its
   pool vector plus small Gaussian noise (re-normalised): every object is distinct, the vector
   space keeps the model's clustering. Then `queries` searches (random tenant, random user, k=5,
   alpha=0.5): end to end (`Retriever.search`: query embedding + hybrid search) and Weaviate's
   hybrid search alone, p50/p95.
3. **Retrieval quality** on the labelled set (tests/retriever/data): recall@5 by search mode.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loraswarm.bench.machine import describe
from loraswarm.bench.report import percentile, write_section
from loraswarm.services.ingestion.pipeline import Indexer
from loraswarm.shared.chunks import COMPANY, ChunkRecord
from loraswarm.shared.embeddings import Embedder, load_embedder
from loraswarm.shared.events import Document
from loraswarm.shared.models import pick_device
from loraswarm.shared.retrieval import Retriever
from loraswarm.shared.settings import Settings
from loraswarm.shared.vectorstore import VectorStore

Log = Callable[[str], object]

_WORDS = [
    "refund",
    "parcel",
    "warranty",
    "tent",
    "pole",
    "zipper",
    "stove",
    "filter",
    "boots",
    "jacket",
    "membrane",
    "shipping",
    "courier",
    "customs",
    "warehouse",
    "invoice",
    "discount",
    "loyalty",
    "points",
    "store",
    "rental",
    "snowshoe",
    "avalanche",
    "beacon",
    "backpack",
    "torso",
    "hip",
    "belt",
    "down",
    "sleeping",
    "bag",
    "rating",
    "repair",
    "fabric",
    "recycled",
    "nylon",
    "policy",
    "employee",
    "leave",
    "laptop",
    "password",
    "network",
    "expense",
    "travel",
    "approval",
    "supplier",
    "retailer",
    "wholesale",
    "order",
    "tracking",
    "delivery",
    "carrier",
    "label",
    "exchange",
    "size",
    "chart",
    "fit",
    "heel",
    "blister",
    "trail",
    "camp",
    "lake",
]


@dataclass(frozen=True)
class BenchSizes:
    docs: int = 60
    tenants: int = 20
    chunks_per_tenant: int = 10_000
    pool: int = 1_000
    queries: int = 300
    labelled: Path | None = Path("tests/retriever/data")
    seed: int = 7


@dataclass(frozen=True)
class IngestResult:
    docs: int
    chunks: int
    pipeline_s: float
    bare_before_s: float
    bare_after_s: float
    stages_ms: dict[str, float]

    @property
    def bare_chunks_per_s(self) -> float:
        return self.chunks / ((self.bare_before_s + self.bare_after_s) / 2)

    @property
    def pipeline_chunks_per_s(self) -> float:
        return self.chunks / self.pipeline_s


@dataclass(frozen=True)
class QueryResult:
    tenants: int
    chunks_per_tenant: int
    pool: int
    pool_embed_s: float
    write_s: float
    queries: int
    end_to_end_ms: list[float]
    hybrid_only_ms: list[float]


def _sentence(rng: random.Random) -> str:
    words = rng.choices(_WORDS, k=rng.randint(8, 18))
    return " ".join(words).capitalize() + "."


def synthetic_documents(n: int, seed: int) -> list[Document]:
    """Markdown documents of 2-4 sections of 2-4 paragraphs (about 3-6 chunks each)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        parts = [f"# Guide {i}: {rng.choice(_WORDS)} and {rng.choice(_WORDS)}"]
        for s in range(rng.randint(2, 4)):
            parts.append(f"## Section {s}: {rng.choice(_WORDS)}")
            for _ in range(rng.randint(2, 4)):
                parts.append(" ".join(_sentence(rng) for _ in range(rng.randint(2, 5))))
        docs.append(
            Document(
                doc_id=f"guide-{i}.md",
                source="bench",
                media_type="text/markdown",
                content="\n\n".join(parts) + "\n",
            )
        )
    return docs


def bench_ingest(
    store: VectorStore, embedder: Embedder, settings: Settings, sizes: BenchSizes
) -> IngestResult:
    indexer = Indexer(store, embedder, settings.retrieval)
    docs = synthetic_documents(sizes.docs, sizes.seed)
    texts: list[str] = []
    for document in docs:
        ready, failures = indexer.prepare(document)
        assert ready is not None, failures
        texts += [c.text for c in ready.chunks]
    batch = settings.retrieval.upsert_batch_size
    embedder.encode(texts[:batch])  # warm-up: first-call allocations are not throughput

    def bare() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(texts), batch):
            embedder.encode(texts[i : i + batch])
        return time.perf_counter() - t0

    before = bare()
    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    chunks = 0
    for i in range(0, len(docs), 16):  # as `loraswarm ingest` sends them
        report = indexer.index("bench-ingest", docs[i : i + 16])
        assert not report.failures, report.failures[:3]
        chunks += report.chunks
        for stage, ms in report.timings_ms.items():
            stages[stage] = stages.get(stage, 0.0) + ms
    pipeline = time.perf_counter() - t0
    after = bare()
    assert chunks == len(texts), f"pipeline wrote {chunks} chunks, expected {len(texts)}"
    return IngestResult(len(docs), chunks, pipeline, before, after, stages)


def bench_queries(
    store: VectorStore, embedder: Embedder, settings: Settings, sizes: BenchSizes, log: Log
) -> QueryResult:
    rng = random.Random(sizes.seed)
    np_rng = np.random.default_rng(sizes.seed)
    pool_texts = [" ".join(_sentence(rng) for _ in range(rng.randint(3, 6))) for _ in range(sizes.pool)]
    t0 = time.perf_counter()
    pool_vectors = embedder.encode(pool_texts)  # (P, D)
    pool_embed_s = time.perf_counter() - t0
    log(f"  pool of {sizes.pool} texts embedded in {pool_embed_s:.1f} s")

    write_s = 0.0
    step = 1000
    for t in range(sizes.tenants):
        tenant = f"bench-{t:02d}"
        for start in range(0, sizes.chunks_per_tenant, step):
            ids = range(start, min(start + step, sizes.chunks_per_tenant))
            picks = np_rng.integers(0, sizes.pool, size=len(ids))
            noise = np_rng.normal(0.0, 0.01, size=(len(ids), pool_vectors.shape[1])).astype(np.float32)
            vectors = pool_vectors[picks] + noise  # (B, D)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            chunks = [
                ChunkRecord(
                    doc_id=f"doc-{j // 4}",
                    parent_id=f"doc-{j // 4}",
                    source="bench",
                    title=f"Document {j // 4}",
                    visibility=f"user:u{j % 5}" if j % 10 == 0 else COMPANY,
                    heading="",
                    text=f"{pool_texts[p]} Reference {tenant}-{j}.",
                    position=j % 4,
                    version="bench",
                )
                for j, p in zip(ids, picks, strict=True)
            ]
            w0 = time.perf_counter()
            store.upsert(tenant, chunks, vectors)
            write_s += time.perf_counter() - w0
        log(f"  tenant {t + 1}/{sizes.tenants}: {sizes.chunks_per_tenant} chunks written")

    retriever = Retriever(store, embedder, settings.retrieval)
    queries = [" ".join(rng.choices(_WORDS, k=rng.randint(2, 7))) for _ in range(sizes.queries)]
    plan = [(f"bench-{rng.randrange(sizes.tenants):02d}", rng.choice([None, "u1", "u3"]), q) for q in queries]
    for tenant, user, q in plan[:10]:  # warm-up: connections, caches
        retriever.search(tenant, q, user_id=user, k=5, alpha=0.5)
    end_to_end = []
    for tenant, user, q in plan:
        q0 = time.perf_counter()
        retriever.search(tenant, q, user_id=user, k=5, alpha=0.5)
        end_to_end.append((time.perf_counter() - q0) * 1000)
    vectors_of = embedder.encode(queries)
    hybrid_only = []
    for (tenant, user, q), vector in zip(plan, vectors_of, strict=True):
        q0 = time.perf_counter()
        store.hybrid(tenant, q, vector.tolist(), user_id=user, k=5, alpha=0.5)
        hybrid_only.append((time.perf_counter() - q0) * 1000)
    return QueryResult(
        sizes.tenants,
        sizes.chunks_per_tenant,
        sizes.pool,
        pool_embed_s,
        write_s,
        len(plan),
        end_to_end,
        hybrid_only,
    )


def bench_quality(store: VectorStore, embedder: Embedder, settings: Settings, folder: Path) -> str:
    from loraswarm.services.retriever.quality import LabelledSet, compare_modes
    from loraswarm.services.retriever.quality import markdown as quality_markdown

    labelled = LabelledSet.load(folder)
    report = Indexer(store, embedder, settings.retrieval).index("bench-labelled", [labelled.corpus])
    results = compare_modes(
        Retriever(store, embedder, settings.retrieval), "bench-labelled", labelled.queries, k=5
    )
    return quality_markdown(results, report.records, len(labelled.queries))


def markdown(
    settings: Settings,
    ingest: IngestResult,
    queries: QueryResult | None,
    quality: str | None,
    load: tuple[float, float, float],
) -> str:
    r = settings.retrieval
    ratio = ingest.pipeline_chunks_per_s / ingest.bare_chunks_per_s
    lines = [
        "## Ingestion and retrieval (`loraswarm bench ingest`)",
        "",
        f"Machine: {describe()}. Weaviate {settings.infra.weaviate_version} (local, single node), "
        f"embedding model {r.embedding_model} on {pick_device(settings.device).name}, batch {r.upsert_batch_size}, "
        f"chunks of ≤ {r.chunk_tokens} tokens (overlap {r.chunk_overlap}). Load average (1 min) at the "
        f"start and end: {load[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores — other work "
        "shared the machine, which slows both the pipeline and its baseline alike.",
        "",
        f"**Ingest throughput**: {ingest.docs} synthetic Markdown documents, {ingest.chunks} chunks, through "
        "the whole pipeline (parse, chunk, embed, upsert, stale-chunk check) against bare embedding of the "
        "same chunk texts in the same run (measured before and after the pipeline; their mean is the "
        "baseline). Goal ≥ 0.8×.",
        "",
        "| path | docs/s | chunks/s | × bare embedding |",
        "|---|---:|---:|---:|",
        f"| bare `encode` (before) | – | {ingest.chunks / ingest.bare_before_s:,.1f} | – |",
        f"| bare `encode` (after) | – | {ingest.chunks / ingest.bare_after_s:,.1f} | – |",
        f"| ingestion pipeline | {ingest.docs / ingest.pipeline_s:,.2f} | {ingest.pipeline_chunks_per_s:,.1f} | "
        f"**{ratio:.2f}** |",
        "",
        "Pipeline time by stage (s): "
        + ", ".join(f"{k} {v / 1000:.1f}" for k, v in ingest.stages_ms.items() if k != "total")
        + " (write_wait: time the embedder waited for Weaviate; writes overlap the next batch's embedding).",
        "",
    ]
    if queries is not None:
        total = queries.tenants * queries.chunks_per_tenant
        lines += [
            f"**Query latency**: {queries.tenants} tenants × {queries.chunks_per_tenant:,} chunks = {total:,} "
            f"objects (10 % user-private). Their texts come from a pool of {queries.pool:,} texts embedded with "
            f"the model ({queries.pool_embed_s:.0f} s); each chunk's vector is its pool vector plus Gaussian "
            f"noise (σ 0.01 per dimension, re-normalised), because embedding {total:,} chunks at the rate "
            f"above would take {total / ingest.bare_chunks_per_s / 3600:.1f} h on this machine. Bulk write with "
            f"precomputed vectors: {total / queries.write_s:,.0f} objects/s. {queries.queries} queries, "
            "random tenant and user (none, or one of five), k = 5, alpha = 0.5:",
            "",
            "| query path | p50 (ms) | p95 (ms) |",
            "|---|---:|---:|",
            f"| `Retriever.search` (query embedding + hybrid search) | {percentile(queries.end_to_end_ms, 50):.1f} | "
            f"{percentile(queries.end_to_end_ms, 95):.1f} |",
            f"| Weaviate hybrid search alone (vector given) | {percentile(queries.hybrid_only_ms, 50):.1f} | "
            f"{percentile(queries.hybrid_only_ms, 95):.1f} |",
            "",
        ]
    if quality is not None:
        lines += ["**Retrieval quality** (recall@5; alpha 0 = BM25 only, 1 = vector only):", "", quality, ""]
    return "\n".join(lines)


def run(settings: Settings, sizes: BenchSizes, *, out: Path, log: Log = print) -> str:
    load = os.getloadavg()
    started = time.perf_counter()
    collection = f"Bench{uuid.uuid4().hex[:10]}"
    settings = settings.model_copy(deep=True)
    settings.retrieval.collection = collection
    log("loading the embedding model")
    embedder = load_embedder(settings)
    store = VectorStore.open(settings)
    try:
        log(f"ingest throughput: {sizes.docs} documents")
        ingest = bench_ingest(store, embedder, settings, sizes)
        queries = None
        if sizes.tenants and sizes.chunks_per_tenant:
            log(f"query latency: {sizes.tenants} tenants × {sizes.chunks_per_tenant} chunks")
            queries = bench_queries(store, embedder, settings, sizes, log)
        quality = None
        if sizes.labelled is not None and (sizes.labelled / "corpus.jsonl").is_file():
            log("recall@5 on the labelled set")
            quality = bench_quality(store, embedder, settings, sizes.labelled)
    finally:
        store.client.collections.delete(collection)
        store.close()
    body = markdown(settings, ingest, queries, quality, load)
    body += f"\nWhole run: {(time.perf_counter() - started) / 60:.1f} min.\n"
    write_section(out, "ingest", body)
    return body
