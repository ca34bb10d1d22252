"""The process's tracer provider and the trace context on outgoing HTTP calls."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from loraswarm.shared.settings import TracingSettings
from loraswarm.shared.tracing import configure_tracing, context_headers, tracer


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
