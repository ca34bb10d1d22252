"""Jaeger (v2, OTLP in, query API out) built from the Go module proxy, run with in-memory storage.

The program is pinned as a Go tool in jaeger/tool/go.mod (its own go.mod has replace directives,
so `go install pkg@version` refuses it); `go build` of that tool puts the binary in the cache.
"""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

from loraswarm.infra.process import (
    ManagedProcess,
    ensure_port_free,
    port_open,
    require_tool,
    run_build,
    wait_until,
)
from loraswarm.shared.settings import InfraSettings

_HERE = Path(__file__).parent / "jaeger"
_GO_HINT = "install Go 1.24 or newer (https://go.dev/doc/install or `apt-get install golang`)"


def binary(infra: InfraSettings) -> Path:
    return infra.home / "bin" / f"jaeger-v{infra.jaeger_version}" / "jaeger"


def process(infra: InfraSettings) -> ManagedProcess:
    return ManagedProcess("jaeger", infra.run_dir, infra.logs_dir)


def installed(infra: InfraSettings) -> bool:
    return binary(infra).is_file()


def install(infra: InfraSettings) -> None:
    if installed(infra):
        return
    go = require_tool("go", "to build Jaeger", _GO_HINT)
    # Build in a scratch copy of the tool module: the repository stays untouched and read-only
    # checkouts work.
    work = infra.home / "build" / f"jaeger-v{infra.jaeger_version}"
    work.mkdir(parents=True, exist_ok=True)
    for name in ("go.mod", "go.sum"):
        shutil.copy(_HERE / "tool" / name, work / name)
    log = infra.logs_dir / "jaeger-install.log"
    run_build(
        [go, "build", "-o", str(binary(infra)), "github.com/jaegertracing/jaeger/cmd/jaeger"],
        env={"CGO_ENABLED": "0"},
        cwd=work,
        log=log,
        what="building Jaeger with `go build`",
    )


def environment(infra: InfraSettings) -> dict[str, str]:
    return {
        "LORASWARM_JAEGER_QUERY_PORT": str(infra.jaeger_query_port),
        "LORASWARM_JAEGER_QUERY_GRPC_PORT": str(infra.jaeger_query_grpc_port),
        "LORASWARM_JAEGER_HEALTH_PORT": str(infra.jaeger_health_port),
        "LORASWARM_JAEGER_OTLP_GRPC_PORT": str(infra.jaeger_otlp_grpc_port),
        "LORASWARM_JAEGER_OTLP_HTTP_PORT": str(infra.jaeger_otlp_http_port),
    }


def _ready(infra: InfraSettings) -> bool:
    try:
        url = f"http://127.0.0.1:{infra.jaeger_query_port}/api/services"
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200) and port_open(infra.jaeger_otlp_http_port)
    except OSError:
        return False


def up(infra: InfraSettings) -> str:
    proc = process(infra)
    if proc.running() and _ready(infra):
        return f"jaeger already running: UI http://127.0.0.1:{infra.jaeger_query_port}"
    install(infra)
    for port, what in (
        (infra.jaeger_query_port, "Jaeger's query API"),
        (infra.jaeger_query_grpc_port, "Jaeger's gRPC query API"),
        (infra.jaeger_health_port, "Jaeger's health check"),
        (infra.jaeger_otlp_grpc_port, "Jaeger's OTLP/gRPC receiver"),
        (infra.jaeger_otlp_http_port, "Jaeger's OTLP/HTTP receiver"),
    ):
        ensure_port_free(port, what)
    child = proc.start([str(binary(infra)), "--config", str(_HERE / "config.yaml")], env=environment(infra))
    wait_until(lambda: _ready(infra), timeout_s=infra.ready_timeout_s, proc=proc, child=child, what="Jaeger")
    return (
        f"jaeger ready: OTLP http://127.0.0.1:{infra.jaeger_otlp_http_port} "
        f"(gRPC {infra.jaeger_otlp_grpc_port}), UI http://127.0.0.1:{infra.jaeger_query_port} "
        f"(log: {proc.log_file})"
    )


def down(infra: InfraSettings) -> str:
    return "jaeger stopped" if process(infra).stop() else "jaeger was not running"


def status(infra: InfraSettings) -> str:
    proc = process(infra)
    if proc.running():
        health = "ready" if _ready(infra) else "starting/unhealthy"
        return f"jaeger: running (pid {proc.pid()}), {health}, UI http://127.0.0.1:{infra.jaeger_query_port}"
    return f"jaeger: stopped{'' if installed(infra) else ' (not built yet)'}"
