"""One request through gateway -> planner -> retriever -> specialists -> model server is ONE trace
in the real Jaeger, read back through Jaeger's query API, every service's spans correctly parented.

Every service runs as its own `loraswarm serve` process (its own tracer provider, exporting over
OTLP), on the real Kafka, Weaviate and the model server with real peft adapters: the trace context
crosses every Kafka hop in record headers and every LLM call in the `traceparent` HTTP header.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from loraswarm.cli.commands.trace import TraceSpan as Span
from loraswarm.shared.vectorstore import shared_store
from tests.conftest import isolated_settings
from tests.e2e.world import ingest, publish_adapters
from tests.gateway.conftest import make_tenants
from tests.gateway.traces import describe, one_trace, wait_for_spans
from tests.planner.conftest import ACME, write_tenant
from tests.processes import free_ports, otlp_env, process, serve, service_env, wait_http

SERVICES = {"gateway", "planner", "retriever", "specialist", "model-server"}


@pytest.mark.jaeger
async def test_one_request_is_one_trace_across_every_service(
    kafka_bootstrap: str, jaeger_url: str, tmp_path: Path
) -> None:
    settings = isolated_settings("kafka", tmp_path, kafka_bootstrap)
    tenants = make_tenants(settings)  # API keys for the gateway; tenants_dir under data_dir
    # The request names ana: a backend that authenticates its users may act for them.
    tenants.set("acme", service_keys_act_for_users=True)
    # Acme as the planner knows it, with a CPU's deadline; its specialists stack ana's adapter.
    write_tenant(
        settings.orchestration.tenants_dir,
        {
            **ACME,
            "slack_team_ids": ["TACME"],
            "specialists": [{**spec, "adapter": "user"} for spec in ACME["specialists"]],
            "limits": {**ACME["limits"], "deadline_s": 300, "max_specialists": 1},
        },
    )
    settings.retrieval.collection = f"Trace{uuid.uuid4().hex[:10]}"
    publish_adapters(settings, tmp_path)
    ingest(settings)
    model_port, gateway_port = free_ports(2)
    env = service_env(
        settings,
        LORASWARM_DEVICE="cpu",
        LORASWARM_RETRIEVAL__COLLECTION=settings.retrieval.collection,
        LORASWARM_MODEL_SERVER__MAX_INPUT_TOKENS="768",
        LORASWARM_MODEL_SERVER__MAX_TOTAL_TOKENS="1024",
        LORASWARM_ORCHESTRATION__TGI_URL=f"http://127.0.0.1:{model_port}",
        LORASWARM_ORCHESTRATION__PRIMARY_LLM_BASE_URL=f"http://127.0.0.1:{model_port}/v1",
        LORASWARM_ORCHESTRATION__LLM_TIMEOUT_S="120",
        **otlp_env(),
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        with ExitStack() as stack:
            children = [
                stack.enter_context(process(serve(name, *options), env, signal.SIGINT, logs / f"{name}.log"))
                for name, options in (
                    ("model-server", ("--port", str(model_port))),
                    ("retriever", ()),
                    ("specialist", ()),
                    ("planner", ()),
                    ("gateway", ("--port", str(gateway_port))),
                )
            ]
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{model_port}/health", children)
            gateway = f"http://127.0.0.1:{gateway_port}"
            await asyncio.to_thread(wait_http, f"{gateway}/healthz", children)
            async with httpx.AsyncClient(
                base_url=gateway, timeout=10, headers=tenants.headers("acme")
            ) as client:
                accepted = await client.post(
                    "/v1/recommendations",
                    json={"question": "Can a tent be refunded?", "user_id": "ana", "deadline_s": 280},
                )
                assert accepted.status_code == 202, accepted.text
                request_id = accepted.json()["request_id"]
                view: dict[str, Any] = {"status": "accepted"}
                for _ in range(1500):  # up to 300 s: generation on a shared CPU
                    view = (await client.get(f"/v1/recommendations/{request_id}")).json()
                    if view["status"] in ("completed", "failed"):
                        break
                    await asyncio.sleep(0.2)
                assert view["status"] == "completed", json.dumps(view)
    except AssertionError:
        for log in sorted(logs.iterdir()):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")
        raise
    finally:
        shared_store(settings).client.collections.delete(settings.retrieval.collection)

    prefix = settings.kafka.topic_prefix

    def complete(spans: list[Span]) -> bool:
        return {s.service for s in spans} >= SERVICES and any(
            s.name == f"process {prefix}recommendation.completed" for s in spans
        )

    spans = await asyncio.to_thread(wait_for_spans, jaeger_url, request_id, complete, 30.0)
    print(describe(spans))
    root = one_trace(spans)
    assert (root.service, root.name, root.kind) == ("gateway", "POST /v1/recommendations", "server")
    by_id = {s.span_id: s for s in spans}

    def parent(span: Span) -> Span:
        assert span.parent_id is not None, f"{span.service}:{span.name} has no parent"
        return by_id[span.parent_id]

    # Every Kafka hop: each consumer span's parent is the producer span of the same topic, in
    # the service that published it.
    hops = [s for s in spans if s.kind == "consumer"]
    for consumer in hops:
        topic = consumer.name.removeprefix("process ")
        producer = parent(consumer)
        assert (producer.kind, producer.name) == ("producer", f"send {topic}"), (
            f"{consumer.service}:{consumer.name} hangs off {producer.service}:{producer.name}"
        )
    seen = {(parent(c).service, c.service, c.name.removeprefix(f"process {prefix}")) for c in hops}
    assert {
        ("gateway", "planner", "recommendation.requested"),
        ("planner", "retriever", "retrieval.requested"),
        ("retriever", "planner", "retrieval.completed"),
        ("planner", "specialist", "specialist.task"),
        ("specialist", "planner", "specialist.result"),
        ("planner", "gateway", "recommendation.completed"),
    } <= seen, seen

    # Every model-server request continues the LLM client span that made it: the planner's chat
    # calls (plan, compose) and the specialist's TGI call with the user's served stack.
    served = [s for s in spans if s.service == "model-server" and s.kind == "server"]
    callers = {(parent(s).service, parent(s).kind) for s in served}
    assert callers == {("planner", "client"), ("specialist", "client")}, callers
    tgi = [s for s in served if parent(s).service == "specialist"]
    assert tgi, "no specialist call reached the model server"
    # ana's pair goes out as its published stack (shared/stacks.py).
    assert [parent(s).name for s in tgi] == ["text_completion acme/user-ana.stack"] * len(tgi)
    for call in tgi:
        task = parent(parent(call))
        assert (task.kind, task.name) == ("consumer", f"process {prefix}specialist.task")
    for call in served:
        if parent(call).service == "planner":
            assert parent(parent(call)).service == "planner"

    # The retriever searched Weaviate inside its own consumer span.
    searches = [s for s in spans if s.service == "retriever" and s.kind not in ("consumer", "producer")]
    assert searches, f"the retriever left no span of its search: {describe(spans)}"
    assert all(parent(s).service == "retriever" for s in searches)
