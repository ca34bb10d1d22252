"""Retrieval quality on the labelled set in tests/retriever/data: recall@5 by search mode.

The numbers are printed (run with -s) and written into BENCHMARKS.md by `loraswarm bench
ingest`. The floors below are what this model and set give with margin; a drop under them means
chunking, the schema or the fusion broke, not noise (everything here is deterministic).
"""

from __future__ import annotations

from pathlib import Path

from loraswarm.services.ingestion.pipeline import Indexer
from loraswarm.services.retriever.quality import LabelledSet, compare_modes, markdown
from loraswarm.shared.retrieval import Retriever

DATA = Path(__file__).parent / "data"


def test_recall_at_5_of_hybrid_beside_bm25_and_vector(indexer: Indexer, retriever: Retriever) -> None:
    labelled = LabelledSet.load(DATA)
    report = indexer.index("northwind", [labelled.corpus])
    assert not report.failures and report.records == 40

    results = {r.mode: r for r in compare_modes(retriever, "northwind", labelled.queries, k=5)}
    print("\n" + markdown(list(results.values()), report.records, len(labelled.queries)))
    hybrid, bm25, vector = results["hybrid"], results["bm25"], results["vector"]

    # Each single mode has the blind spot the set was built to show...
    assert bm25.by_kind["keyword"] >= 0.9 and bm25.by_kind["paraphrase"] <= 0.85
    assert vector.by_kind["paraphrase"] >= 0.9
    # ...and hybrid covers both.
    assert hybrid.overall >= 0.95
    assert hybrid.overall >= max(bm25.overall, vector.overall)
