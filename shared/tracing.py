"""OpenTelemetry for every service: one provider per process, and the Kafka messaging spans.

Messaging spans follow the current semantic conventions (docs/messaging/kafka.md): the producer
side is `send {topic}` (PRODUCER), the consumer side `process {topic}` (CONSUMER) whose parent
is the context that travelled in the record's W3C `traceparent` header. FastStream's own
telemetry middleware still uses deprecated attribute names, so it is not used.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Span, SpanKind

from loraswarm import __version__
from loraswarm.shared.settings import TracingSettings

TRACER_NAME = "loraswarm"


class JsonLinesSpanExporter(SpanExporter):
    """One JSON object per finished span, appended to a file (the embedded default's trace store)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [span.to_json(indent=None) for span in spans]
        with self._lock, self.path.open("a") as out:
            for line in lines:
                out.write(line + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def configure_tracing(service: str, settings: TracingSettings) -> TracerProvider:
    """Install this process's tracer provider (once); spans carry `service.name = service`.

    OpenTelemetry allows one provider per process: when one is installed already (several
    services in one process, as `serve all` runs them), that one is kept and returned.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": service, "service.namespace": "loraswarm", "service.version": __version__}
        )
    )
    exporter: SpanExporter | None = None
    if settings.exporter == "console":
        exporter = ConsoleSpanExporter()
    elif settings.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint.rstrip("/") + "/v1/traces")
    elif settings.exporter == "file":
        exporter = JsonLinesSpanExporter(settings.file)
    if exporter is not None:
        processor = (
            SimpleSpanProcessor(exporter) if settings.exporter == "file" else BatchSpanProcessor(exporter)
        )
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


@functools.cache
def tracer() -> trace.Tracer:
    # One per process: get_tracer costs a lookup per span (two per event on the bus), and a
    # tracer obtained before the provider is set is a proxy that follows it once set.
    return trace.get_tracer(TRACER_NAME, __version__)


def _key_attr(key: bytes | None) -> dict[str, Any]:
    return {} if key is None else {"messaging.kafka.message.key": key.decode("utf-8", "replace")}


class _Recording:
    """Whether this process records spans: an SDK tracer provider is installed.

    Without one (the `none` exporter, the benchmarks), OpenTelemetry's API would still build a
    non-recording span per send and per process and propagate through them: the messaging spans
    below then skip the spans and keep only what reaches the next hop, the incoming trace
    context, so a trace still runs through a process that records none of it.

    Asked twice per event, so the answer is kept: for good once a provider is installed (there
    is one per process), for a second while none is (services install theirs before their bus
    starts; asking the API each time cost about as much as the span it decides on).
    """

    def __init__(self) -> None:
        self._on = False
        self._asked_at = -_RECHECK_S

    def __call__(self) -> bool:
        if not self._on:
            now = time.monotonic()
            if now - self._asked_at >= _RECHECK_S:
                self._on = isinstance(trace.get_tracer_provider(), TracerProvider)
                self._asked_at = now
        return self._on


_RECHECK_S = 1.0
recording = _Recording()


@contextmanager
def send_span(topic: str, key: bytes | None, event_id: object | None) -> Iterator[Span]:
    """The PRODUCER span of sending one record; `event_id` is its message id (any object with
    a `str`, converted only when recorded)."""
    if not recording():
        yield trace.get_current_span()  # the record carries the current (upstream) context
        return
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
        **_key_attr(key),
    }
    if event_id:
        attributes["messaging.message.id"] = str(event_id)
    with tracer().start_as_current_span(
        f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        yield span


def context_headers() -> dict[str, str]:
    """The current span's W3C trace context as HTTP headers (`traceparent`, `tracestate`)."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


class _InjectedContext:
    """What the propagators write for the current context, worked out once per context.

    A context is immutable and a propagator writes only what the context holds, so the headers
    are a function of (current context, global propagator): asked per event (every record the
    bus sends), they are worked out again only when either changed. While spans are recorded
    every send has a span, so a context, of its own; without a provider, a burst of events sent
    from one context pays for one injection instead of one each (about 3 µs).
    """

    def __init__(self) -> None:
        # The context object itself is kept: an identity check against a dead one could match
        # a new context at the same address.
        self._context: context.Context | None = None
        self._propagator: object = None
        self._fields: dict[str, str] = {}

    def into(self, carrier: dict[str, str]) -> None:
        current = context.get_current()
        propagator = propagate.get_global_textmap()
        if current is not self._context or propagator is not self._propagator:
            fields: dict[str, str] = {}
            propagator.inject(fields, context=current)
            self._context, self._propagator, self._fields = current, propagator, fields
        carrier.update(self._fields)


inject_context = _InjectedContext().into
"""Add the current context's trace headers (`traceparent`, `tracestate`, ...) to `carrier`."""


async def _inject_trace_context(request: Any) -> None:
    # An httpx request hook runs in the caller's task, so the current span is the caller's.
    propagate.inject(request.headers)


def trace_inference_clients() -> None:
    """Make huggingface_hub's async clients (the specialists' TGI client) send the trace context.

    `AsyncInferenceClient` takes no per-call headers; its HTTP client comes from a factory that
    huggingface_hub lets us replace: its default client, plus a hook adding `traceparent`, so
    TGI's (and the model server's) request span joins the specialist's trace.
    """
    from huggingface_hub import set_async_client_factory
    from huggingface_hub.utils._http import default_async_client_factory

    def traced() -> Any:
        client = default_async_client_factory()
        client.event_hooks["request"].append(_inject_trace_context)
        return client

    set_async_client_factory(traced)


def headers_dict(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in (headers or ())}


class _ExtractedContext:
    """The context a record's headers carry, extracted again only when they differ.

    What a propagator extracts depends on the carrier, on the current context (the baggage
    propagator starts from it) and on which propagator is installed: the last answer is kept
    with those three. The bus's own headers (`bus_headers`: content type, event type, request
    id) are not trace context and are left out of the carrier, so records that carry the same
    trace context (or none: a producer without tracing) share one extraction instead of paying
    about 4 µs each; a traced flow, a new `traceparent` per record, extracts each as before.
    """

    def __init__(self, bus_headers: frozenset[str]) -> None:
        self._bus_headers = bus_headers
        self._key: tuple[tuple[str, bytes], ...] | None = None
        self._current: context.Context | None = None
        self._propagator: object = None
        self._context = context.Context()

    def of(self, headers: Sequence[tuple[str, bytes]] | None) -> context.Context:
        key = tuple(item for item in headers or () if item[0] not in self._bus_headers)
        current = context.get_current()
        propagator = propagate.get_global_textmap()
        if key != self._key or current is not self._current or propagator is not self._propagator:
            carrier = {name: value.decode("utf-8", "replace") for name, value in key}
            self._context = propagator.extract(carrier)
            self._key, self._current, self._propagator = key, current, propagator
        return self._context


BUS_HEADERS = frozenset({"content-type", "event-type", "request-id"})
"""Headers the bus writes on every record besides the trace context (codec.encode)."""

parent_context = _ExtractedContext(BUS_HEADERS).of
"""The producer's context that a record's headers carry."""


@contextmanager
def process_span(record: Any, group: str | None, event_id: str | None) -> Iterator[Span]:
    """The CONSUMER span of handling one record, child of the producer's context."""
    parent = parent_context(record.headers)
    if not recording():
        token = context.attach(parent)  # what this handler sends continues the producer's trace
        try:
            yield trace.get_current_span()
        finally:
            context.detach(token)
        return
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        **_key_attr(record.key),
    }
    if group:
        attributes["messaging.consumer.group.name"] = group
    if event_id:
        attributes["messaging.message.id"] = event_id
    token = context.attach(parent)
    try:
        with tracer().start_as_current_span(
            f"process {record.topic}", kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield span
    finally:
        context.detach(token)


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    return json.loads(span.to_json(indent=None))  # type: ignore[no-any-return]


# ---------------------------------------------------------------- GenAI (LLM calls)


@contextmanager
def genai_span(
    operation: str,
    *,
    provider: str,
    model: str,
    attributes: dict[str, Any] | None = None,
) -> Iterator[Span]:
    """The CLIENT span of one LLM call, per the GenAI semantic conventions.

    `operation` is `chat`, `text_completion`, `generate_content`, ...; `provider` names the
    serving system (`huggingface` for TGI or the model server, `openai`, ...); `model` is what
    was asked for: the adapter id for a specialist, the model name for the planner. Record the
    answer's usage with `record_usage` before the block ends.
    """
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        **(attributes or {}),
    }
    with tracer().start_as_current_span(
        f"{operation} {model}", kind=SpanKind.CLIENT, attributes=attrs
    ) as span:
        yield span


def record_usage(
    span: Span,
    *,
    input_tokens: int,
    output_tokens: int,
    response_model: str | None = None,
    finish_reasons: Sequence[str] = (),
) -> None:
    """Put an LLM answer's usage on its `genai_span` (count it per tenant with `metrics.count_tokens`)."""
    span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if response_model:
        span.set_attribute("gen_ai.response.model", response_model)
    if finish_reasons:
        span.set_attribute("gen_ai.response.finish_reasons", list(finish_reasons))


@contextmanager
def server_span(
    method: str, route: str | None, headers: dict[str, str], attributes: dict[str, Any] | None = None
) -> Iterator[Span]:
    """The SERVER span of one HTTP request, child of the caller's W3C trace context if it sent one.

    Named `{method} {route}`, or `{method}` while the route template is not known yet (the
    caller may `update_name` once routing has found it).
    """
    parent = propagate.extract(headers)
    attrs: dict[str, Any] = {"http.request.method": method, **(attributes or {})}
    if route:
        attrs["http.route"] = route
    name = f"{method} {route}" if route else method
    token = context.attach(parent)
    try:
        with tracer().start_as_current_span(name, kind=SpanKind.SERVER, attributes=attrs) as span:
            yield span
    finally:
        context.detach(token)
