"""Prometheus metrics every service shares (DESIGN.md §7), in the process's default registry.

The bus and the consumer policy count events on their own (published, handled, duplicates,
dead letters, handling time), so every service has those without a line of its own. A service
adds what only it knows: its HTTP routes (`observe_http`), the tokens of its LLM calls per
tenant (`count_tokens`, next to `tracing.genai_span`), its own counters below. Exposition:
an HTTP service mounts `metrics_response()` at `/metrics`; a service without HTTP calls
`serve_metrics(port)`. `ConsumerLagMonitor` measures how far consumer groups are behind.

deploy/grafana/loraswarm.json and deploy/prometheus/ use exactly these names (a test checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from loraswarm.shared.settings import KafkaSettings
from loraswarm.shared.topics import prefixed

log = logging.getLogger("loraswarm.metrics")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# ---------------------------------------------------------------- HTTP

HTTP_REQUESTS = Counter(
    "loraswarm_http_requests_total",
    "HTTP requests answered, by route template and status code.",
    ["service", "method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "loraswarm_http_request_duration_seconds",
    "Time to answer an HTTP request (to the first byte of a stream).",
    ["service", "method", "route"],
    buckets=_LATENCY_BUCKETS,
)

# ---------------------------------------------------------------- events (bus and consumer policy)

EVENTS_PUBLISHED = Counter(
    "loraswarm_events_published_total", "Events published, by topic.", ["service", "topic"]
)
EVENTS_CONSUMED = Counter(
    "loraswarm_events_consumed_total",
    "Records a consumer group took off a topic: handled, duplicate (skipped) or dead_lettered.",
    ["group", "topic", "outcome"],
)
EVENT_HANDLING = Histogram(
    "loraswarm_event_handling_duration_seconds",
    "Time a handler took for one event, retries included.",
    ["group", "topic"],
    buckets=_LATENCY_BUCKETS,
)
DEAD_LETTERS = Counter(
    "loraswarm_dead_letters_total",
    "Messages sent to the dlq topic, by why.",
    ["group", "topic", "error_type"],
)
CONSUMER_LAG = Gauge(
    "loraswarm_consumer_lag",
    "Records on a partition that the group has not committed yet (end offset - committed offset).",
    ["group", "topic", "partition"],
)

# ---------------------------------------------------------------- LLM calls

LLM_TOKENS = Counter(
    "loraswarm_llm_tokens_total",
    "Tokens of LLM calls per tenant; type is input or output; model is the adapter id or base model.",
    ["service", "tenant", "model", "type"],
)
LLM_DURATION = Histogram(
    "loraswarm_llm_request_duration_seconds",
    "Duration of one LLM call (GenAI operation: chat, text_completion, ...).",
    ["service", "operation", "model"],
    buckets=_LATENCY_BUCKETS,
)
REQUEST_TOKENS = Counter(
    "loraswarm_request_tokens",
    "Tokens of every LLM call of a request (answered or failed), by tenant, user, adapter stack, "
    "step and direction.",
    ["tenant", "user", "adapter", "step", "direction"],
)

GUARDRAIL_HITS = Counter(
    "loraswarm_guardrail_hits_total",
    "Answers the planner's output guardrail withheld, by tenant, what they contained and where.",
    ["tenant", "kind", "stage"],
)

# ---------------------------------------------------------------- recommendations (gateway)

RECOMMENDATIONS = Counter(
    "loraswarm_recommendations_total",
    "Recommendation requests by what became of them: accepted, rate_limited, completed, failed.",
    ["tenant", "outcome"],
)
RECOMMENDATION_DURATION = Histogram(
    "loraswarm_recommendation_duration_seconds",
    "From the gateway accepting a request to its outcome arriving.",
    ["outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
RATE_LIMITED = Counter(
    "loraswarm_rate_limited_total", "Requests refused with 429, per tenant.", ["service", "tenant"]
)
REQUESTS_REFUSED = Counter(
    "loraswarm_requests_refused_total",
    "Requests refused before anything was published: unauthorized, too_large, invalid_signature, ...",
    ["service", "reason"],
)
DELIVERIES = Counter(
    "loraswarm_deliveries_total",
    "Webhook and Slack delivery attempts by result: delivered, retry, failed, disabled.",
    ["kind", "outcome"],
)


def observe_http(service: str, method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(service, method, route, str(status)).inc()
    HTTP_DURATION.labels(service, method, route).observe(seconds)


def count_tokens(service: str, tenant: str, model: str, *, input_tokens: int, output_tokens: int) -> None:
    """Count one LLM call's tokens for `tenant` (call it where `tracing.record_usage` is called)."""
    LLM_TOKENS.labels(service, tenant, model, "input").inc(input_tokens)
    LLM_TOKENS.labels(service, tenant, model, "output").inc(output_tokens)


def metrics_response() -> tuple[bytes, str]:
    """The body and content type of a `/metrics` answer."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Expose `/metrics` on its own port, for services without an HTTP server (a daemon thread)."""
    start_http_server(port, addr=host)


class ConsumerLagMonitor:
    """Sets `loraswarm_consumer_lag` for `groups` on `topics` every `interval_s` (Kafka only).

    Lag is read the way `kafka-consumer-groups --describe` reads it: the group's committed
    offsets from the group coordinator, the partitions' end offsets from the brokers.
    """

    def __init__(
        self, kafka: KafkaSettings, groups: Iterable[str], topics: Iterable[str], *, interval_s: float = 15.0
    ) -> None:
        self.kafka = kafka
        self.groups = list(groups)
        self.topics = [prefixed(t, kafka.topic_prefix) for t in topics]
        self.interval_s = interval_s

    async def measure(self) -> dict[tuple[str, str, int], int]:
        """One measurement: (group, unprefixed topic, partition) -> lag; also sets the gauge."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        from loraswarm.shared.kafka_client import aiokafka_security

        security = aiokafka_security(self.kafka)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka.bootstrap_servers, **security)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.kafka.bootstrap_servers, **security)
        await admin.start()
        await consumer.start()
        # aiokafka cannot stop a consumer whose background task has not run yet: let it start.
        await asyncio.sleep(0)
        lags: dict[tuple[str, str, int], int] = {}
        try:
            partitions = [
                _topic_partition(topic["topic"], p["partition"])
                for topic in await admin.describe_topics(self.topics)
                if not topic.get("error_code")
                for p in topic.get("partitions") or ()
            ]
            if not partitions:
                return lags
            ends: dict[Any, int] = await consumer.end_offsets(partitions)
            for group in self.groups:
                committed = await admin.list_consumer_group_offsets(
                    self.kafka.group(group), partitions=partitions
                )
                for tp in partitions:
                    meta = committed.get(tp)
                    # A group that never committed a partition has all of it ahead of it.
                    position = meta.offset if meta is not None and meta.offset >= 0 else 0
                    topic = tp.topic.removeprefix(self.kafka.topic_prefix)
                    lag = max(0, ends[tp] - position)
                    lags[(group, topic, tp.partition)] = lag
                    CONSUMER_LAG.labels(group, topic, str(tp.partition)).set(lag)
        finally:
            await consumer.stop()
            await admin.close()
        return lags

    async def run(self) -> None:
        """Measure until cancelled; a failed measurement is logged and tried again."""
        while True:
            try:
                await self.measure()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("measuring consumer lag failed")
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> ConsumerLagMonitor:
        self._task = asyncio.create_task(self.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _topic_partition(topic: str, partition: int) -> Any:
    from aiokafka import TopicPartition

    return TopicPartition(topic, partition)
