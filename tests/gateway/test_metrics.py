"""Shared metrics and tracing helpers: the bus counts events and dead letters on its own, consumer
lag is measured on the real Kafka, GenAI spans follow the conventions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import RetrievalRequested
from loraswarm.shared.metrics import ConsumerLagMonitor, count_tokens
from loraswarm.shared.settings import Settings
from loraswarm.shared.tracing import genai_span, record_usage
from tests.conftest import isolated_settings
from tests.gateway.conftest import until


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_bus_counts_published_handled_duplicate_and_dead_lettered_events(
    settings: Settings,
) -> None:
    bus = EventBus(settings, service="metrics-test")
    group = f"metrics-{settings.kafka.topic_prefix}"
    handled: list[str] = []

    @bus.consumer(RetrievalRequested, group=group)
    async def handle(event: RetrievalRequested) -> None:
        if event.query == "broken":
            raise ValueError("cannot")
        handled.append(event.query)

    labels = {"group": group, "topic": "retrieval.requested"}
    before = sample("loraswarm_events_published_total", service="metrics-test", topic="retrieval.requested")
    good = RetrievalRequested(tenant_id="acme", query="fine")
    async with bus:
        await bus.publish(good)
        await bus.publish(good)  # the same event again: a duplicate
        await bus.publish(RetrievalRequested(tenant_id="acme", query="broken"))
        await bus.publish_raw("retrieval.requested", b"not json", key=b"acme")
        await until(lambda: sample("loraswarm_dead_letters_total", **labels, error_type="not_json") == 1)
        await until(lambda: sample("loraswarm_dead_letters_total", **labels, error_type="handler_error") == 1)
    assert handled == ["fine"]
    published = sample(
        "loraswarm_events_published_total", service="metrics-test", topic="retrieval.requested"
    )
    assert published - before == 3
    assert sample("loraswarm_events_consumed_total", **labels, outcome="handled") == 1
    assert sample("loraswarm_events_consumed_total", **labels, outcome="duplicate") == 1
    assert sample("loraswarm_events_consumed_total", **labels, outcome="dead_lettered") == 2
    assert sample("loraswarm_event_handling_duration_seconds_count", **labels) == 2


async def test_consumer_lag_is_what_the_group_has_not_committed(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = isolated_settings("kafka", tmp_path, kafka_bootstrap)
    settings.kafka.commit_interval_s = 0.05
    group = "lag-test"
    seen: list[str] = []
    consumer = EventBus(settings, service="lag-consumer")

    @consumer.consumer(RetrievalRequested, group=group)
    async def handle(event: RetrievalRequested) -> None:
        seen.append(event.query)

    producer = EventBus(settings, service="lag-producer")
    monitor = ConsumerLagMonitor(settings.kafka, [group], ["retrieval.requested"])
    async with producer:
        async with consumer:
            await producer.publish_many(
                [RetrievalRequested(tenant_id=f"t{i}", query=f"a{i}") for i in range(10)]
            )
            await until(lambda: len(seen) == 10)
            await asyncio.sleep(0.5)  # let the commits land
            caught_up = await monitor.measure()
        await producer.publish_many([RetrievalRequested(tenant_id=f"t{i}", query=f"b{i}") for i in range(7)])
        behind = await monitor.measure()
    assert sum(caught_up.values()) == 0
    assert sum(behind.values()) == 7
    assert {topic for _, topic, _ in behind} == {"retrieval.requested"}
    gauge = sum(
        REGISTRY.get_sample_value(
            "loraswarm_consumer_lag", {"group": group, "topic": "retrieval.requested", "partition": str(p)}
        )
        or 0.0
        for (_, _, p) in behind
    )
    assert gauge == 7


def test_genai_spans_follow_the_conventions_and_tokens_are_counted_per_tenant(
    spans: InMemorySpanExporter,
) -> None:
    with genai_span("chat", provider="huggingface", model="acme/support@3") as span:
        record_usage(
            span,
            input_tokens=120,
            output_tokens=42,
            response_model="acme/support@3",
            finish_reasons=["length"],
        )
    count_tokens("specialist", "acme", "acme/support@3", input_tokens=120, output_tokens=42)
    [finished] = spans.get_finished_spans()
    assert finished.name == "chat acme/support@3"
    assert finished.kind == SpanKind.CLIENT
    assert dict(finished.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "huggingface",
        "gen_ai.request.model": "acme/support@3",
        "gen_ai.response.model": "acme/support@3",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 42,
        "gen_ai.response.finish_reasons": ("length",),
    }
    labels = {"service": "specialist", "tenant": "acme", "model": "acme/support@3"}
    assert sample("loraswarm_llm_tokens_total", **labels, type="input") >= 120
    assert sample("loraswarm_llm_tokens_total", **labels, type="output") >= 42
    assert json.dumps(dict(finished.attributes or {}), default=list)
