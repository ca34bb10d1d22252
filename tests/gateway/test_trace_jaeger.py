"""One request through the hops that exist today (HTTP -> gateway -> Kafka -> a planner stand-in
-> Kafka -> gateway -> webhook) is one trace in the real Jaeger, every span correctly parented,
read back through Jaeger's query API; `loraswarm trace` draws it, from Jaeger and from the file.

The whole flow (planner -> retriever -> specialists -> model server) is checked the same way in
tests/e2e/test_trace.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner

from loraswarm.cli import app as cli
from loraswarm.cli.commands.trace import TraceSpan, render_waterfall, spans_from_file
from loraswarm.services.gateway.access import new_webhook_secret
from loraswarm.shared.settings import Settings
from loraswarm.shared.tracing import JsonLinesSpanExporter
from tests.conftest import isolated_settings
from tests.gateway.conftest import Receiver, make_tenants, receiver, running_gateway, until
from tests.gateway.traces import child_of, hop, one_trace, wait_for_spans
from tests.processes import free_port, otlp_env, process, serve, service_env


@pytest.mark.jaeger
async def test_a_request_is_one_trace_in_jaeger_across_processes(
    kafka_bootstrap: str, jaeger_url: str, tmp_path: Path
) -> None:
    settings = isolated_settings("kafka", tmp_path, kafka_bootstrap)
    tenants = make_tenants(settings)
    port = free_port()
    env = service_env(settings, LORASWARM_GATEWAY__WEBHOOK_BACKOFF_S="0.05", **otlp_env())
    hook = Receiver()
    async with receiver(hook) as hook_url:
        tenants.set("acme", webhooks=[{"url": hook_url, "secrets": [new_webhook_secret()]}])
        with (
            process([sys.executable, "-m", "tests.gateway.planner_process"], env, signal.SIGTERM) as planner,
            process(serve("gateway", "--host", "127.0.0.1", "--port", str(port)), env, signal.SIGINT),
        ):
            assert planner.stdout is not None
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                for _ in range(300):
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    await asyncio.sleep(0.1)
                accepted = await client.post(
                    "/v1/recommendations", json={"question": "trace me"}, headers=tenants.headers("acme")
                )
                assert accepted.status_code == 202, accepted.text
                request_id = accepted.json()["request_id"]
                await until(lambda: len(hook.accepted()) == 1, timeout_s=60, what="the webhook delivery")

    prefix = settings.kafka.topic_prefix
    names = {
        "request": "POST /v1/recommendations",
        "send_req": f"send {prefix}recommendation.requested",
        "process_req": f"process {prefix}recommendation.requested",
        "send_done": f"send {prefix}recommendation.completed",
        "process_done": f"process {prefix}recommendation.completed",
    }

    def complete(spans: list[TraceSpan]) -> bool:
        return {s.name for s in spans} >= {*names.values(), "deliver webhook"}

    spans = await asyncio.to_thread(wait_for_spans, jaeger_url, request_id, complete)
    root = one_trace(spans)
    request = hop(spans, "gateway", names["request"], "server")
    assert root == request
    assert request.attributes["http.response.status_code"] == 202
    assert request.attributes["loraswarm.request_id"] == request_id
    send_req = hop(spans, "gateway", names["send_req"], "producer")
    process_req = hop(spans, "planner-stub", names["process_req"], "consumer")
    send_done = hop(spans, "planner-stub", names["send_done"], "producer")
    process_done = hop(spans, "gateway", names["process_done"], "consumer")
    deliver = hop(spans, "gateway", "deliver webhook", "client")
    child_of(send_req, request)
    child_of(process_req, send_req)
    child_of(send_done, process_req)
    child_of(process_done, send_done)
    child_of(deliver, process_done)
    assert process_req.attributes["messaging.consumer.group.name"] == "planner-stub"
    assert process_done.attributes["messaging.consumer.group.name"] == "gateway"
    assert process_done.attributes["messaging.system"] == "kafka"
    assert process_done.attributes["messaging.kafka.message.key"] == "acme"

    shown = CliRunner().invoke(cli, ["trace", request_id, "--source", "jaeger", "--jaeger-url", jaeger_url])
    assert shown.exit_code == 0, shown.output
    print(shown.output)
    lines = shown.output.splitlines()
    assert lines[0].startswith(
        f"trace {request.trace_id}  {len(spans)} spans, 2 services (gateway, planner-stub)"
    )
    order = [
        next(i for i, line in enumerate(lines) if line.rstrip().endswith(f"{n} [{k}]"))
        for n, k in (
            (names["request"], "server"),
            (names["send_req"], "producer"),
            (names["process_req"], "consumer"),
            (names["send_done"], "producer"),
            (names["process_done"], "consumer"),
        )
    ]
    assert order == sorted(order), "the waterfall lists the hops out of order"


async def test_loraswarm_trace_draws_the_waterfall_from_the_trace_file(
    settings: Settings, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    tenants = make_tenants(settings)
    async with running_gateway(settings) as gateway:
        rid = (
            await gateway.client.post(
                "/v1/recommendations", json={"question": "q"}, headers=tenants.headers("acme")
            )
        ).json()["request_id"]
        await until(
            lambda: any(
                s.name.endswith("recommendation.completed") and s.kind.name == "CONSUMER"
                for s in spans.get_finished_spans()
            )
        )
        await gateway.client.post(
            "/v1/recommendations", json={"question": "other"}, headers=tenants.headers("acme")
        )
    path = tmp_path / "traces.jsonl"
    JsonLinesSpanExporter(path).export(spans.get_finished_spans())  # the embedded default's exporter

    found = spans_from_file(path, rid)
    assert len({s.trace_id for s in found}) == 1
    assert {s.name for s in found} >= {
        "POST /v1/recommendations",
        f"process {settings.kafka.topic_prefix}recommendation.completed",
    }
    drawn = render_waterfall(found, width=20)
    assert drawn[0].startswith(f"trace {found[0].trace_id}  {len(found)} spans")
    assert all("|" in line for line in drawn[1:])
    shown = CliRunner().invoke(cli, ["trace", rid, "--file", str(path)])
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines() == render_waterfall(found)
    missing = CliRunner().invoke(cli, ["trace", "00000000-0000-0000-0000-000000000000", "--file", str(path)])
    assert missing.exit_code == 1
    assert "no trace of request" in missing.output
