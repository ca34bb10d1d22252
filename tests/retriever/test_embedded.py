"""Embedded mode: the locally built Weaviate binary started from this process, nothing downloaded."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from loraswarm.infra import weaviate as local_weaviate
from loraswarm.services.ingestion.pipeline import Indexer
from loraswarm.shared import weaviate_connection
from loraswarm.shared.embeddings import SentenceEmbedder
from loraswarm.shared.retrieval import Retriever
from loraswarm.shared.settings import Settings
from loraswarm.shared.vectorstore import VectorStore, VectorStoreUnavailable
from tests.ingestion.samples import doc
from tests.processes import free_ports


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def embedded_settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data")
    settings.infra.home = tmp_path / "home"  # the client's binary folder goes here, not in ~/.cache
    weaviate = settings.retrieval.weaviate
    weaviate.mode = "embedded"
    weaviate.embedded_binary = local_weaviate.binary(Settings().infra)
    weaviate.embedded_port, weaviate.embedded_grpc_port = free_ports(2)
    return settings


def test_embedded_weaviate_runs_the_local_binary(
    weaviate_ready: None, embedder: SentenceEmbedder, tmp_path: Path
) -> None:
    settings = embedded_settings(tmp_path)
    port = settings.retrieval.weaviate.embedded_port
    try:
        with VectorStore.open(settings) as store:
            assert listening(port)
            Indexer(store, embedder, settings.retrieval).index(
                "acme", [doc("a.md", "# Kayaks\n\nSea kayaks rent from $40 a day.")]
            )
            (passage,) = Retriever(store, embedder, settings.retrieval).search("acme", "kayak rental price")
            assert passage.citation.doc_id == "a.md"
        # A second connection in the same process reuses the running server.
        with VectorStore.open(settings) as again:
            assert again.count("acme") == 1
    finally:
        weaviate_connection.stop_embedded()
    assert not listening(port), "the embedded server stops with its owner"

    folder = tmp_path / "home" / "weaviate-embedded"
    (link,) = folder.iterdir()  # no downloaded archive beside it
    assert link.is_symlink() and link.resolve() == local_weaviate.binary(Settings().infra).resolve()
    assert link.name.startswith(f"weaviate-v{settings.infra.weaviate_version}-")
    assert (tmp_path / "data" / "weaviate").is_dir(), "data kept under data_dir"


def test_embedded_mode_without_the_binary_says_how_to_get_it(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    settings.retrieval.weaviate.embedded_binary = tmp_path / "missing" / "weaviate-server"
    with pytest.raises(VectorStoreUnavailable, match="loraswarm infra up weaviate"):
        VectorStore.open(settings)
