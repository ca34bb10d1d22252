"""The same real Weaviate and embedding model fixtures as tests/ingestion."""

from __future__ import annotations

from tests.ingestion.conftest import embedder, indexer, retriever, store, weaviate_ready

__all__ = ["embedder", "indexer", "retriever", "store", "weaviate_ready"]
