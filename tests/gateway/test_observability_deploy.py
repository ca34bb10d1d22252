"""deploy/otel, deploy/prometheus and deploy/grafana: the collector config runs (on the local
Jaeger v2, itself an OpenTelemetry Collector) and forwards spans and span metrics; the dashboard
uses only metric names that something exports; Prometheus scrapes the compose services."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import REGISTRY
from prometheus_client.registry import CollectorRegistry

from loraswarm.infra import jaeger as local_jaeger
from loraswarm.shared import metrics as _metrics  # noqa: F401 (registers the shared metrics)
from loraswarm.shared.settings import Settings
from tests.processes import free_ports

ROOT = Path(__file__).parents[2]
COLLECTOR = ROOT / "deploy/otel/collector.yaml"
DASHBOARD = ROOT / "deploy/grafana/loraswarm.json"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
SPAN_METRICS = {
    "traces_span_metrics_calls_total",
    "traces_span_metrics_duration_milliseconds_bucket",
    "traces_span_metrics_duration_milliseconds_sum",
    "traces_span_metrics_duration_milliseconds_count",
}


def sample_names(registry: CollectorRegistry) -> set[str]:
    """The sample names a registry exports (a counter `x` is `x_total`, a histogram `x_bucket`...)."""
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def exported_names() -> set[str]:
    from loraswarm.services.model_server.metrics import ServerMetrics

    return sample_names(REGISTRY) | sample_names(ServerMetrics(dict).registry) | SPAN_METRICS


_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")


def metrics_in(expr: str) -> set[str]:
    """Metric names in a PromQL expression (every selector here carries `{...}` or `[...]`)."""
    return {m for m in _SELECTOR.findall(expr) if not m.startswith("$")}


def dashboard_exprs() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] if p["type"] != "row" for t in p["targets"]]


def test_the_dashboard_uses_only_exported_metric_names() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    known = exported_names()
    used: set[str] = set()
    for title, expr in dashboard_exprs():
        names = metrics_in(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= known, f"{title}: unknown metrics {sorted(names - known)}"
        assert expr.count("(") == expr.count(")"), f"{title}: unbalanced {expr!r}"
        used |= names
    # Every family the services export is on the dashboard (a new one needs a panel).
    shared = {n for n in sample_names(REGISTRY) if n.startswith("loraswarm_")}
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in shared}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families <= shown, f"not on the dashboard: {sorted(families - shown)}"


def test_prometheus_scrapes_services_that_compose_runs() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"gateway", "model-server", "otel-collector"} <= set(jobs)
    for job in jobs.values():
        for group in job["static_configs"]:
            for target in group["targets"]:
                host, port = target.rsplit(":", 1)
                assert host in compose, f"{job['job_name']} scrapes {host}, not a compose service"
                assert port.isdigit()
    gateway_command = compose["gateway"]["command"]
    assert jobs["gateway"]["static_configs"][0]["targets"] == [f"gateway:{gateway_command[-1]}"]
    collector = yaml.safe_load(COLLECTOR.read_text())
    prometheus_port = collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1].rstrip("}")
    assert jobs["otel-collector"]["static_configs"][0]["targets"] == [f"otel-collector:{prometheus_port}"]


def test_promtool_accepts_the_prometheus_config_and_every_dashboard_query(tmp_path: Path) -> None:
    """Prometheus's own checker, over the config and (as recording rules) every panel's query.

    promtool is pinned in deploy/prometheus/promtool/go.mod and built from the Go module proxy
    like Jaeger, but its first build takes about 20 minutes on two cores, so this test runs where
    it has been built and says how to build it where it has not.
    """
    promtool = Settings().infra.home / "bin" / "promtool"
    if not promtool.exists():
        pytest.skip(
            f"no promtool at {promtool}: cd deploy/prometheus/promtool && "
            f"go build -o {promtool} github.com/prometheus/prometheus/cmd/promtool"
        )
    checked = subprocess.run(
        [str(promtool), "check", "config", "--syntax-only", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    grafana = {"$__rate_interval": "5m", "$tenant": ".*"}
    rules = []
    for i, (title, expr) in enumerate(dashboard_exprs()):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:panel_{i}", "expr": expr, "labels": {"panel": title}})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = dict(m.split(":")[:2] for m in compose["volumes"] if str(m).startswith("./"))
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/loraswarm.yaml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/loraswarm.json"].startswith(folder + "/")
    sources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/loraswarm.yaml").read_text())
    assert {s["type"] for s in sources["datasources"]} == {"prometheus", "jaeger"}


# ---------------------------------------------------------------- the collector, for real


@pytest.fixture(scope="module")
def jaeger_binary() -> Path:
    infra = Settings().infra
    local_jaeger.up(infra)  # builds it once; the test also forwards to this running Jaeger
    return local_jaeger.binary(infra)


@contextlib.contextmanager
def collector(binary: Path, env: dict[str, str], log: Path) -> Iterator[None]:
    with log.open("w") as out:
        child = subprocess.Popen(
            [
                str(binary),
                "--config",
                str(COLLECTOR),
                "--set=connectors.spanmetrics.metrics_flush_interval=1s",
            ],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield
        finally:
            child.terminate()
            child.wait(timeout=30)


def test_the_collector_config_validates(jaeger_binary: Path, tmp_path: Path) -> None:
    checked = subprocess.run(
        [str(jaeger_binary), "validate", "--config", str(COLLECTOR)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = COLLECTOR.read_text().replace("check_interval:", "check_intervall:")
    bad = tmp_path / "collector.yaml"
    bad.write_text(broken)
    refused = subprocess.run(
        [str(jaeger_binary), "validate", "--config", str(bad)], capture_output=True, text=True, check=False
    )
    assert refused.returncode != 0, "validate accepts anything: the check above would prove nothing"


@pytest.mark.jaeger
def test_the_collector_forwards_spans_and_turns_them_into_metrics(
    jaeger_binary: Path, tmp_path: Path
) -> None:
    infra = Settings().infra
    otlp_http, metrics_port, otlp_grpc = free_ports(3)
    env = {
        "OTELCOL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{otlp_grpc}",
        "OTELCOL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{otlp_http}",
        "OTELCOL_TRACES_ENDPOINT": f"127.0.0.1:{infra.jaeger_otlp_grpc_port}",
        "OTELCOL_PROMETHEUS_ENDPOINT": f"127.0.0.1:{metrics_port}",
    }
    service = f"collector-test-{uuid.uuid4().hex[:8]}"
    with collector(jaeger_binary, env, tmp_path / "collector.log"):
        for _ in range(100):
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", otlp_http), timeout=0.2),
            ):
                break
            time.sleep(0.1)
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{otlp_http}/v1/traces"))
        )
        tracer = provider.get_tracer("test")
        with (
            tracer.start_as_current_span(
                "POST /v1/recommendations",
                kind=SpanKind.SERVER,
                attributes={"http.route": "/v1/recommendations"},
            ),
            tracer.start_as_current_span(
                "process recommendation.requested",
                kind=SpanKind.CONSUMER,
                attributes={"messaging.destination.name": "recommendation.requested"},
            ),
            tracer.start_as_current_span(
                "chat acme/support",
                kind=SpanKind.CLIENT,
                attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "acme/support"},
            ) as llm,
        ):
            llm.set_status(Status(StatusCode.ERROR, "boom"))
        provider.shutdown()

        scraped = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
                if f'service_name="{service}"' in scraped and "gen_ai_request_model" in scraped:
                    break
            time.sleep(0.5)
    ours = [line for line in scraped.splitlines() if f'service_name="{service}"' in line]
    names = {line.split("{", 1)[0] for line in ours}
    assert names == SPAN_METRICS, (tmp_path / "collector.log").read_text()[-2000:]
    assert any(
        'span_kind="SPAN_KIND_CONSUMER"' in line
        and 'messaging_destination_name="recommendation.requested"' in line
        for line in ours
    )
    assert any(
        'gen_ai_request_model="acme/support"' in line and 'status_code="STATUS_CODE_ERROR"' in line
        for line in ours
    )
    assert any('http_route="/v1/recommendations"' in line for line in ours)

    # ... and the spans themselves reached Jaeger through the collector.
    traces: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while not traces and time.monotonic() < deadline:
        answer = httpx.get(
            f"http://127.0.0.1:{infra.jaeger_query_port}/api/traces", params={"service": service, "limit": 5}
        )
        traces = answer.json().get("data") or [] if answer.status_code == 200 else []
        time.sleep(0.5)
    assert len(traces) == 1
    assert len(traces[0]["spans"]) == 3
