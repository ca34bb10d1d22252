"""Retrieval quality on a labelled set: recall@k of hybrid search beside BM25-only and vector-only.

A labelled set is a folder with `corpus.jsonl` (records `{"id", "title", "text"}`) and
`queries.jsonl` (`{"query", "relevant": [ids], "kind"}`). The corpus is ingested through the
real pipeline as one JSONL document, so its records' doc ids are `<parent>#<id>`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loraswarm.shared.events import Document
from loraswarm.shared.retrieval import Retriever

MODES: dict[str, float] = {"hybrid": 0.5, "bm25": 0.0, "vector": 1.0}  # name -> alpha


@dataclass(frozen=True)
class LabelledQuery:
    query: str
    relevant: frozenset[str]
    kind: str


@dataclass(frozen=True)
class LabelledSet:
    corpus: Document
    queries: list[LabelledQuery]

    @classmethod
    def load(cls, folder: Path, parent_id: str = "labelled") -> LabelledSet:
        raw = (folder / "corpus.jsonl").read_bytes()
        corpus = Document(
            doc_id=parent_id,
            source="labelled-set",
            title="labelled set",
            media_type="application/x-ndjson",
            content=base64.b64encode(raw).decode("ascii"),
            content_encoding="base64",
            metadata={"text_template": "{text}", "id_field": "id", "title_field": "title"},
        )
        queries = []
        for line in (folder / "queries.jsonl").read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                relevant = frozenset(f"{parent_id}#{r}" for r in row["relevant"])
                queries.append(LabelledQuery(row["query"], relevant, row.get("kind", "")))
        return cls(corpus, queries)


@dataclass(frozen=True)
class Recall:
    mode: str
    alpha: float
    k: int
    overall: float
    by_kind: dict[str, float]
    misses: list[str]  # queries with nothing relevant in the top k


def recall_at_k(
    retriever: Retriever, tenant_id: str, queries: Sequence[LabelledQuery], *, k: int, alpha: float, mode: str
) -> Recall:
    """Mean over queries of |relevant ∩ top-k docs| / |relevant|."""
    per_kind: dict[str, list[float]] = {}
    misses = []
    for q in queries:
        found = {p.citation.doc_id for p in retriever.search(tenant_id, q.query, k=k, alpha=alpha)}
        recall = len(found & q.relevant) / len(q.relevant)
        per_kind.setdefault(q.kind or "all", []).append(recall)
        if recall == 0:
            misses.append(q.query)
    values = [v for vs in per_kind.values() for v in vs]
    return Recall(
        mode=mode,
        alpha=alpha,
        k=k,
        overall=sum(values) / len(values),
        by_kind={kind: sum(vs) / len(vs) for kind, vs in sorted(per_kind.items())},
        misses=misses,
    )


def compare_modes(
    retriever: Retriever, tenant_id: str, queries: Sequence[LabelledQuery], k: int = 5
) -> list[Recall]:
    return [
        recall_at_k(retriever, tenant_id, queries, k=k, alpha=alpha, mode=mode)
        for mode, alpha in MODES.items()
    ]


def markdown(results: Sequence[Recall], n_docs: int, n_queries: int) -> str:
    kinds = sorted({kind for r in results for kind in r.by_kind})
    header = f"| mode | alpha | recall@{results[0].k} | " + " | ".join(kinds) + " |"
    rows = [header, "|---|---:|---:|" + "---:|" * len(kinds)]
    for r in results:
        rows.append(
            f"| {r.mode} | {r.alpha:.2f} | {r.overall:.3f} | "
            + " | ".join(f"{r.by_kind.get(kind, float('nan')):.3f}" for kind in kinds)
            + " |"
        )
    return "\n".join(
        [f"Labelled set: {n_docs} records, {n_queries} queries (tests/retriever/data).", "", *rows]
    )
