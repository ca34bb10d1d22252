"""The process's tracer provider and the trace context on outgoing HTTP calls."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from loraswarm.shared.settings import TracingSettings
from loraswarm.shared.tracing import (
    configure_tracing,
    context_headers,
    inject_context,
    parent_context,
    tracer,
)


def test_a_second_service_in_the_process_keeps_the_installed_provider() -> None:
    # tests/conftest.py installed one, as the first service of `serve all` would.
    installed = trace.get_tracer_provider()
    assert configure_tracing("planner", TracingSettings(exporter="none")) is installed
    assert trace.get_tracer_provider() is installed


def test_context_headers_carry_the_current_span(spans: InMemorySpanExporter) -> None:
    assert "traceparent" not in context_headers()
    with tracer().start_as_current_span("call") as span:
        headers = context_headers()
    ctx = span.get_span_context()
    version, trace_id, parent_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert int(flags, 16) & 0x01, "sampled"


def _injected() -> dict[str, str]:
    carrier: dict[str, str] = {}
    inject_context(carrier)
    return carrier


def test_injected_headers_follow_the_current_context(spans: InMemorySpanExporter) -> None:
    """The bus's injection is worked out once per context: never a previous context's headers."""
    assert _injected() == _injected() == {}
    with tracer().start_as_current_span("first"):
        first = _injected()
        assert _injected() == first == context_headers()
    with tracer().start_as_current_span("second"):
        second = _injected()
    assert first["traceparent"] != second["traceparent"]
    assert second == {"traceparent": second["traceparent"]} and _injected() == {}


def test_the_parent_context_follows_the_trace_headers_not_the_bus_headers(
    spans: InMemorySpanExporter,
) -> None:
    def record(request_id: str, trace_headers: dict[str, str]) -> list[tuple[str, bytes]]:
        headers = {"content-type": "application/json", "event-type": "x", "request-id": request_id}
        return [(k, v.encode()) for k, v in (headers | trace_headers).items()]

    def span_id(headers: list[tuple[str, bytes]]) -> int:
        return trace.get_current_span(parent_context(headers)).get_span_context().span_id

    with tracer().start_as_current_span("a") as a:
        from_a = context_headers()
    with tracer().start_as_current_span("b") as b:
        from_b = context_headers()
    assert span_id(record("r1", from_a)) == a.get_span_context().span_id
    assert span_id(record("r2", from_a)) == a.get_span_context().span_id
    assert span_id(record("r2", from_b)) == b.get_span_context().span_id
    assert span_id(record("r3", {})) == 0  # no trace context: no parent span
