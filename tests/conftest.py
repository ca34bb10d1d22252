"""Fixtures shared by every test: real local infrastructure, started on demand, and isolation.

Tests that need Kafka, Weaviate or Jaeger start it through the same code as `loraswarm infra up`
(idempotent: a running one is reused). Each test gets its own topic prefix and data folder, so
tests never see each other's events.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from loraswarm.infra import jaeger as local_jaeger
from loraswarm.infra import kafka as local_kafka
from loraswarm.infra import vllm as local_vllm
from loraswarm.shared.kafka_client import delete_topics
from loraswarm.shared.settings import Settings

# These machines are noisy: no per-example deadline, no "too slow" health check.
hypothesis_settings.register_profile("loraswarm", deadline=None, suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile("loraswarm")

_SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_SPANS))
trace.set_tracer_provider(_provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans finished during the test (a real SDK provider with an in-memory exporter)."""
    _SPANS.clear()
    yield _SPANS
    _SPANS.clear()


# Every topic prefix handed out in this session; their topics are deleted at the end, so the
# shared local broker does not collect thousands of partitions over many runs.
TOPIC_PREFIX = f"t{uuid.uuid4().hex[:6]}-"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real local Kafka broker (KRaft), started if it is not running."""
    infra = Settings().infra
    local_kafka.up(infra)
    bootstrap = local_kafka.bootstrap(infra)
    yield bootstrap
    kafka = Settings().kafka.model_copy(update={"bootstrap_servers": bootstrap})
    asyncio.run(delete_topics(kafka, TOPIC_PREFIX))


@pytest.fixture(scope="session")
def jaeger_url() -> str:
    """A real local Jaeger (OTLP in, query API out), started if it is not running; its query URL."""
    infra = Settings().infra
    local_jaeger.up(infra)
    return f"http://127.0.0.1:{infra.jaeger_query_port}"


@pytest.fixture(scope="session")
def vllm_url() -> Iterator[str]:
    """Real vLLM (its CPU build, run-time LoRA loading), started if it is not running (installed
    once: about 6 GB, 4 minutes); its OpenAI base URL. One this session started is stopped at its
    end: it holds about 6 GB of memory the rest of the suite wants."""
    infra = Settings().infra
    started = not local_vllm.process(infra).running()
    local_vllm.up(infra)
    yield local_vllm.url(infra)
    if started:
        local_vllm.down(infra)


def isolated_settings(broker: str, tmp_path: Path, bootstrap: str | None = None) -> Settings:
    settings = Settings(broker=broker, data_dir=tmp_path / "data")  # type: ignore[arg-type]
    settings.kafka.topic_prefix = f"{TOPIC_PREFIX}{uuid.uuid4().hex[:8]}."
    settings.kafka.partitions = 3
    settings.kafka.retry_backoff_s = 0.01
    if bootstrap:
        settings.kafka.bootstrap_servers = bootstrap
    return settings


@pytest.fixture(params=["memory", "kafka"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for the in-process broker and for the real Kafka: the same tests run on both."""
    if request.param == "kafka":
        return isolated_settings("kafka", tmp_path, request.getfixturevalue("kafka_bootstrap"))
    return isolated_settings("memory", tmp_path)
