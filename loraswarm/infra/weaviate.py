"""Weaviate built from source with `go install` (no cgo), run as a local single-node server."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from loraswarm.infra.process import (
    InfraError,
    ManagedProcess,
    ensure_port_free,
    port_open,
    require_tool,
    run_build,
    wait_until,
)
from loraswarm.shared.settings import InfraSettings

_GO_HINT = "install Go 1.24 or newer (https://go.dev/doc/install or `apt-get install golang`)"


def binary(infra: InfraSettings) -> Path:
    return infra.weaviate_binary


def process(infra: InfraSettings) -> ManagedProcess:
    return ManagedProcess("weaviate", infra.run_dir, infra.logs_dir)


def installed(infra: InfraSettings) -> bool:
    return binary(infra).is_file()


def install(infra: InfraSettings) -> None:
    if installed(infra):
        return
    go = require_tool("go", "to build Weaviate", _GO_HINT)
    # The first build compiles a large module graph: several minutes on 2 cores, then cached in
    # Go's own caches (GOMODCACHE, GOCACHE) and in the binary below.
    run_build(
        [go, "install", f"github.com/weaviate/weaviate/cmd/weaviate-server@v{infra.weaviate_version}"],
        env={"CGO_ENABLED": "0", "GOBIN": str(binary(infra).parent), "GOFLAGS": "-mod=mod"},
        log=infra.logs_dir / "weaviate-install.log",
        what="building Weaviate with `go install`",
    )


def environment(infra: InfraSettings) -> dict[str, str]:
    return {
        "PERSISTENCE_DATA_PATH": str(infra.run_dir / "weaviate-data"),
        "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
        "DEFAULT_VECTORIZER_MODULE": "none",
        "CLUSTER_HOSTNAME": "node1",
        "RAFT_BOOTSTRAP_EXPECT": "1",
        "DISABLE_TELEMETRY": "true",
        "GRPC_PORT": str(infra.weaviate_grpc_port),
        "QUERY_DEFAULTS_LIMIT": "25",
        "LOG_LEVEL": "info",
    }


def _ready(infra: InfraSettings) -> bool:
    url = f"http://127.0.0.1:{infra.weaviate_port}/v1/.well-known/ready"
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200) and port_open(infra.weaviate_grpc_port)
    except OSError:
        return False


def up(infra: InfraSettings) -> str:
    proc = process(infra)
    if proc.running() and _ready(infra):
        return f"weaviate already running on http://127.0.0.1:{infra.weaviate_port}"
    install(infra)
    ensure_port_free(infra.weaviate_port, "Weaviate")
    ensure_port_free(infra.weaviate_grpc_port, "Weaviate's gRPC")
    child = proc.start(
        [str(binary(infra)), "--host", "127.0.0.1", "--port", str(infra.weaviate_port), "--scheme", "http"],
        env=environment(infra),
        cwd=infra.run_dir,
    )
    wait_until(
        lambda: _ready(infra), timeout_s=infra.ready_timeout_s, proc=proc, child=child, what="Weaviate"
    )
    return f"weaviate ready on http://127.0.0.1:{infra.weaviate_port}, gRPC {infra.weaviate_grpc_port} (log: {proc.log_file})"


def down(infra: InfraSettings) -> str:
    return "weaviate stopped" if process(infra).stop() else "weaviate was not running"


def status(infra: InfraSettings) -> str:
    proc = process(infra)
    if proc.running():
        health = "ready" if _ready(infra) else "starting/unhealthy"
        return f"weaviate: running (pid {proc.pid()}), {health}, http://127.0.0.1:{infra.weaviate_port}"
    return f"weaviate: stopped{'' if installed(infra) else ' (not built yet)'}"


__all__ = ["InfraError", "binary", "down", "install", "installed", "status", "up"]
