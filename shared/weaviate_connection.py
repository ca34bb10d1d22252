"""The Weaviate connection: a server's (local or production) or an embedded one started here.

`connect(settings)` opens a client for a server (the local one, or production with API key and
HTTPS/TLS gRPC) or, with `mode = "embedded"`, the locally built binary (`InfraSettings.weaviate_binary`,
the same path `loraswarm infra up weaviate` builds to) started from this process
(`start_embedded`). The store's errors live here because connecting is where they begin, with
the wrapper every Weaviate call goes through (`weaviate_errors`) and its span (`db_span`).

Errors, by level::

    VectorStoreError               anything the vector store refuses or cannot do
    ├── VectorStoreUnavailable     no connection (server down, embedded binary missing)
    └── WriteFailed                Weaviate rejected some objects of a batch
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loraswarm.shared.settings import Settings


class VectorStoreError(Exception):
    """The vector store refused or failed an operation; the message says what to do."""


class VectorStoreUnavailable(VectorStoreError):
    """No Weaviate to talk to."""


class WriteFailed(VectorStoreError):
    """Weaviate rejected objects of a batch (the first reasons are in the message)."""


def connect(settings: Settings) -> Any:
    """A connected `weaviate.WeaviateClient` for these settings (close it when done)."""
    import weaviate
    from pydantic import ValidationError
    from weaviate.classes.init import AdditionalConfig, Auth, Timeout
    from weaviate.exceptions import WeaviateBaseError

    cfg = settings.retrieval.weaviate
    config = AdditionalConfig(timeout=Timeout(query=cfg.timeout_s, insert=cfg.timeout_s, init=10))
    try:
        if cfg.mode == "embedded":
            port, grpc_port = start_embedded(settings)
            return weaviate.connect_to_local(
                host="127.0.0.1", port=port, grpc_port=grpc_port, additional_config=config
            )
        return weaviate.connect_to_custom(
            http_host=cfg.http_host,
            http_port=cfg.http_port,
            http_secure=cfg.http_secure,
            grpc_host=cfg.grpc_host or cfg.http_host,
            grpc_port=cfg.grpc_port,
            grpc_secure=cfg.grpc_secure,
            auth_credentials=Auth.api_key(cfg.api_key.get_secret_value()) if cfg.api_key else None,
            additional_config=config,
            skip_init_checks=cfg.skip_init_checks,
        )
    except ValidationError as exc:  # the client validates its connection parameters with pydantic
        raise VectorStoreError(
            f"invalid Weaviate connection settings (LORASWARM_RETRIEVAL__WEAVIATE__*): {exc.errors()[0]['msg']}"
        ) from exc
    except WeaviateBaseError as exc:
        where = (
            f"embedded on port {cfg.embedded_port}"
            if cfg.mode == "embedded"
            else f"{'https' if cfg.http_secure else 'http'}://{cfg.http_host}:{cfg.http_port}"
            f" (gRPC {cfg.grpc_host or cfg.http_host}:{cfg.grpc_port})"
        )
        raise VectorStoreUnavailable(
            f"cannot reach Weaviate {where}: {' '.join(str(exc).split())} Locally: "
            "`loraswarm infra up weaviate`; "
            "elsewhere set LORASWARM_RETRIEVAL__WEAVIATE__HTTP_HOST/GRPC_HOST/API_KEY."
        ) from exc


def embedded_binary(settings: Settings) -> Path:
    """The weaviate-server binary that embedded mode runs (built by `loraswarm infra up weaviate`)."""
    configured = settings.retrieval.weaviate.embedded_binary
    return configured if configured is not None else settings.infra.weaviate_binary


def embedded_binary_dir(settings: Settings) -> Path:
    """Where the weaviate client's embedded mode looks for its binary.

    The client runs `<binary_path>/weaviate-v<ver>-<sha256("v<ver>")>` when that file exists and
    downloads a release otherwise; a link there to our own build means it never downloads.
    """
    version = settings.infra.weaviate_version
    folder = settings.infra.home / "weaviate-embedded"
    name = f"weaviate-v{version}-{hashlib.sha256(f'v{version}'.encode()).hexdigest()}"
    source = embedded_binary(settings)
    if not source.is_file():
        raise VectorStoreUnavailable(
            f"embedded Weaviate runs the locally built binary {source}, which is missing: "
            "run `loraswarm infra up weaviate` once (it builds it), or set "
            "LORASWARM_RETRIEVAL__WEAVIATE__EMBEDDED_BINARY."
        )
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / name
    if not link.exists() or link.resolve() != source.resolve():
        tmp = folder / f".{name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(source.resolve())
        tmp.replace(link)  # atomic: a concurrent starter never sees a half-made link
    return folder


_embedded: dict[tuple[int, int], Any] = {}
_embedded_lock = threading.Lock()


def start_embedded(settings: Settings) -> tuple[int, int]:
    """Start the embedded Weaviate once per process (reused after); its (REST, gRPC) ports.

    It runs the locally built binary with its data in `embedded_data_dir` and stops when the
    process exits (or `stop_embedded()`). When something already listens on both ports — the
    same Weaviate started by another process of this machine — that one is used.
    """
    import weaviate
    from weaviate.exceptions import WeaviateStartUpError

    cfg = settings.retrieval.weaviate
    ports = (cfg.embedded_port, cfg.embedded_grpc_port)
    with _embedded_lock:
        if ports in _embedded:
            return ports
        data = cfg.embedded_data_dir or settings.data_dir / "weaviate"
        try:
            owner = weaviate.connect_to_embedded(
                hostname="127.0.0.1",
                port=ports[0],
                grpc_port=ports[1],
                version=settings.infra.weaviate_version,
                binary_path=str(embedded_binary_dir(settings)),
                persistence_data_path=str(data),
                environment_variables={
                    "DEFAULT_VECTORIZER_MODULE": "none",
                    "DISABLE_TELEMETRY": "true",
                    # Its logs go to this process's terminal: errors only. Its debug listener
                    # (:6060) would collide with the local Weaviate server's, so it is off.
                    "LOG_LEVEL": "error",
                    "GO_PROFILING_DISABLE": "true",
                },
            )
        except WeaviateStartUpError as exc:
            if "already listening on ports" not in str(exc):
                raise VectorStoreUnavailable(f"embedded Weaviate did not start: {exc}") from exc
            owner = None  # another process's embedded Weaviate serves these ports
        _embedded[ports] = owner
        return ports


def stop_embedded() -> None:
    """Stop the embedded Weaviate this process started, if any."""
    with _embedded_lock:
        for owner in _embedded.values():
            if owner is not None:
                owner.close()  # closing the owning client stops its server process
        _embedded.clear()


atexit.register(stop_embedded)


# ---------------------------------------------------------------- every call to Weaviate


@contextmanager
def db_span(operation: str, collection: str, tenant_id: str, **attributes: Any) -> Iterator[Any]:
    """A CLIENT span per Weaviate call, per the OpenTelemetry database conventions."""
    from opentelemetry.trace import SpanKind

    from loraswarm.shared.tracing import tracer

    attrs = {
        "db.system.name": "weaviate",
        "db.operation.name": operation,
        "db.collection.name": collection,
        "db.namespace": tenant_id,  # the Weaviate tenant: one company's shard
        **attributes,
    }
    with tracer().start_as_current_span(
        f"{operation} {collection}", kind=SpanKind.CLIENT, attributes=attrs
    ) as span:
        yield span


def tenant_missing(exc: BaseException) -> bool:
    return "tenant not found" in str(exc)


@contextmanager
def weaviate_errors(what: str) -> Iterator[None]:
    """Weaviate's exceptions as the store's: unreachable vs. refused."""
    from weaviate.exceptions import WeaviateBaseError, WeaviateClosedClientError, WeaviateConnectionError

    try:
        yield
    except VectorStoreError:
        raise
    except (WeaviateConnectionError, WeaviateClosedClientError) as exc:
        raise VectorStoreUnavailable(f"Weaviate unreachable while {what}: {exc}") from exc
    except WeaviateBaseError as exc:
        if "StatusCode.UNAVAILABLE" in str(exc) or "Connection refused" in str(exc):
            raise VectorStoreUnavailable(f"Weaviate unreachable while {what}: {exc}") from exc
        raise VectorStoreError(f"Weaviate failed {what}: {exc}") from exc
