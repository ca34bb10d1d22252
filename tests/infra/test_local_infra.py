"""`loraswarm infra`: real processes, idempotent, health-checked, clear sentences when it cannot."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraswarm.infra import jaeger, kafka, weaviate
from loraswarm.infra.process import InfraError
from loraswarm.shared.settings import InfraSettings, Settings
from tests.processes import free_ports

CLI = [sys.executable, "-m", "loraswarm.cli"]


def test_up_is_idempotent_and_status_reports_health() -> None:
    infra = Settings().infra
    kafka.up(infra)
    assert kafka.up(infra).startswith("kafka already running")
    assert "healthy" in kafka.status(infra)


def test_weaviate_is_a_real_server_the_client_accepts() -> None:
    import weaviate as weaviate_client

    infra = Settings().infra
    weaviate.up(infra)
    assert weaviate.up(infra).startswith("weaviate already running")
    client = weaviate_client.connect_to_local(
        host="127.0.0.1", port=infra.weaviate_port, grpc_port=infra.weaviate_grpc_port
    )
    try:
        assert client.is_ready()
        assert client.get_meta()["version"] == infra.weaviate_version
    finally:
        client.close()


@pytest.fixture
def jaeger_elsewhere(tmp_path: Path) -> Iterator[InfraSettings]:
    """A second Jaeger on free ports with its own state folder: ports and folders are settings."""
    query, query_grpc, otlp_grpc, otlp_http, health = free_ports(5)
    infra = Settings().infra.model_copy(
        update={
            "state_dir": tmp_path / "state",
            "jaeger_query_port": query,
            "jaeger_query_grpc_port": query_grpc,
            "jaeger_otlp_grpc_port": otlp_grpc,
            "jaeger_otlp_http_port": otlp_http,
            "jaeger_health_port": health,
        }
    )
    yield infra
    jaeger.down(infra)


def test_ports_and_state_folder_are_configurable(jaeger_elsewhere: InfraSettings) -> None:
    infra = jaeger_elsewhere
    message = jaeger.up(infra)
    assert f"127.0.0.1:{infra.jaeger_query_port}" in message
    with urllib.request.urlopen(f"http://127.0.0.1:{infra.jaeger_query_port}/api/services", timeout=5) as r:
        assert r.status == 200
    assert (infra.run_dir / "logs" / "jaeger.log").exists()
    assert (infra.run_dir / "jaeger.pid").exists()
    assert jaeger.down(infra) == "jaeger stopped"
    assert "stopped" in jaeger.status(infra)


def test_a_port_in_use_is_one_clear_sentence(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        infra = Settings().infra.model_copy(update={"state_dir": tmp_path, "jaeger_query_port": port})
        with pytest.raises(InfraError, match=f"port {port} for Jaeger's query API is already in use"):
            jaeger.up(infra)


def _cli_without_tools(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    bare = tmp_path / "bin"
    bare.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PATH": str(bare),  # no java, mvn or go
        "LORASWARM_INFRA__HOME": str(tmp_path / "home"),
        "COLUMNS": "200",
    }
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("service", "tool", "hint"),
    [("kafka", "java", "Java 17"), ("weaviate", "go", "install Go"), ("jaeger", "go", "install Go")],
)
def test_a_missing_toolchain_is_one_sentence_not_a_traceback(
    tmp_path: Path, service: str, tool: str, hint: str
) -> None:
    result = _cli_without_tools(tmp_path, "infra", "up", service)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert f"`{tool}` was not found on PATH" in output
    assert hint in output
    assert "Traceback" not in output


def test_status_of_everything(tmp_path: Path) -> None:
    result = _cli_without_tools(tmp_path, "infra", "status")
    assert result.returncode == 0
    for name in (
        "kafka: stopped (not installed yet)",
        "weaviate: stopped (not built yet)",
        "jaeger: stopped",
    ):
        assert name in result.stdout


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # uuid4 bytes whose base64 starts with "-" (0xf8...), then ordinary ones: the storage tool
    # would read "-..." as an option, so the id is drawn again.
    import uuid

    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(int=12345)])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    cluster_id = kafka._cluster_id()
    assert not cluster_id.startswith("-") and len(cluster_id) == 22
