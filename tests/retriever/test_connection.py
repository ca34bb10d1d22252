"""Connection settings for any Weaviate (production: API key, HTTPS, TLS gRPC) and clear failures."""

from __future__ import annotations

import socket

import pytest

from loraswarm.shared.settings import Settings
from loraswarm.shared.vectorstore import VectorStore, VectorStoreError, VectorStoreUnavailable


def test_production_connection_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORASWARM_RETRIEVAL__WEAVIATE__HTTP_HOST", "weaviate.example.com")
    monkeypatch.setenv("LORASWARM_RETRIEVAL__WEAVIATE__HTTP_PORT", "443")
    monkeypatch.setenv("LORASWARM_RETRIEVAL__WEAVIATE__HTTP_SECURE", "true")
    monkeypatch.setenv("LORASWARM_RETRIEVAL__WEAVIATE__GRPC_HOST", "grpc-weaviate.example.com")
    monkeypatch.setenv("LORASWARM_RETRIEVAL__WEAVIATE__GRPC_PORT", "443")
    monkeypatch.setenv("LORASWARM_RETRIEVAL__WEAVIATE__GRPC_SECURE", "true")
    monkeypatch.setenv("LORASWARM_RETRIEVAL__WEAVIATE__API_KEY", "s3cret")
    monkeypatch.setenv("LORASWARM_RETRIEVAL__COLLECTION", "AcmeChunks")
    weaviate = Settings().retrieval.weaviate
    assert (weaviate.http_host, weaviate.http_port, weaviate.http_secure) == (
        "weaviate.example.com",
        443,
        True,
    )
    assert (weaviate.grpc_host, weaviate.grpc_port, weaviate.grpc_secure) == (
        "grpc-weaviate.example.com",
        443,
        True,
    )
    assert weaviate.api_key is not None and weaviate.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(weaviate)
    assert Settings().retrieval.collection == "AcmeChunks"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


def test_an_unreachable_server_is_a_clear_error() -> None:
    closed = closed_port()
    settings = Settings()
    settings.retrieval.weaviate.http_port = closed
    settings.retrieval.weaviate.grpc_port = closed_port()
    with pytest.raises(
        VectorStoreUnavailable, match=rf"cannot reach Weaviate http://127.0.0.1:{closed}.*infra up weaviate"
    ):
        VectorStore.open(settings)


def test_a_collection_name_weaviate_would_refuse_is_refused_early() -> None:
    with pytest.raises(ValueError, match="collection"):
        Settings(retrieval={"collection": "lower-case-and-dashes"})  # type: ignore[arg-type]


def test_impossible_connection_settings_are_a_clear_error() -> None:
    settings = Settings()
    settings.retrieval.weaviate.grpc_port = settings.retrieval.weaviate.http_port
    with pytest.raises(VectorStoreError, match="invalid Weaviate connection settings"):
        VectorStore.open(settings)
