"""The event bus on the in-process broker and on the real Kafka: the same tests, the same semantics."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from loraswarm.shared import tracing
from loraswarm.shared.bus import EventBus
from loraswarm.shared.envelope import Envelope
from loraswarm.shared.events import EVENT_MODELS, DeadLetter, RetrievalCompleted, RetrievalRequested
from loraswarm.shared.settings import Settings
from tests.samples import sample_events


async def until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def collect_dead_letters(bus: EventBus, letters: list[DeadLetter]) -> None:
    @bus.broker.subscriber(bus.topic("dlq"), group_id="dlq-watch", auto_offset_reset="earliest")
    async def on_dead_letter(letter: DeadLetter) -> None:
        letters.append(letter)


def test_every_event_type_has_a_sample() -> None:
    assert {type(e) for e in sample_events()} == set(EVENT_MODELS)


async def test_every_event_type_round_trips_with_trace_context(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    bus = EventBus(settings, service="test")
    received: dict[str, tuple[Envelope, int]] = {}

    def handler_for(model: type[Envelope]) -> Any:
        async def handle(event: Envelope) -> None:
            received[event.type] = (event, trace.get_current_span().get_span_context().trace_id)

        return handle

    for model in EVENT_MODELS:
        bus.consumer(model, group="round-trip")(handler_for(model))

    events = sample_events()
    async with bus:
        with trace.get_tracer("test").start_as_current_span("client request") as root:
            for event in events:
                await bus.publish(event)
        await until(lambda: len(received) == len(events))

    root_trace = root.get_span_context().trace_id
    for event in events:
        got, trace_id = received[event.type]
        assert got == event
        assert trace_id == root_trace, f"{event.type} handled outside the producer's trace"

    finished = spans.get_finished_spans()
    sends = {s.context.span_id: s for s in finished if s.kind == SpanKind.PRODUCER}
    processes = [s for s in finished if s.kind == SpanKind.CONSUMER]
    assert len(processes) == len(events)
    for span in processes:
        assert span.attributes is not None
        assert span.parent is not None and span.parent.span_id in sends, "traceparent header lost"
        assert span.name == "process " + str(span.attributes["messaging.destination.name"])
        assert span.attributes["messaging.system"] == "kafka"
        assert span.attributes["messaging.consumer.group.name"] == "round-trip"
        assert span.attributes["messaging.kafka.message.key"] == "acme"


async def test_poison_goes_to_dlq_and_the_next_valid_message_is_handled(settings: Settings) -> None:
    bus = EventBus(settings, service="test")
    handled: list[RetrievalRequested] = []
    letters: list[DeadLetter] = []

    @bus.consumer(RetrievalRequested, group="retriever")
    async def handle(event: RetrievalRequested) -> None:
        handled.append(event)

    collect_dead_letters(bus, letters)
    valid = RetrievalRequested(tenant_id="acme", query="refunds")
    poison: dict[str, tuple[bytes, bytes | None]] = {
        "not_json": (b"\x00\xffnot json at all", b"acme"),
        "validation": (
            json.dumps({"type": "retrieval.requested", "tenant_id": "acme", "k": -1}).encode(),
            b"acme",
        ),
        "too_large": (
            json.dumps({**json.loads(valid.model_dump_json()), "query": "x" * (2 * 1024 * 1024)}).encode(),
            b"acme",
        ),
        "unknown_type": (json.dumps({"type": "refund.requested", "tenant_id": "acme"}).encode(), b"acme"),
        "key_mismatch": (
            valid.model_copy(update={"tenant_id": "globex"}).model_dump_json().encode(),
            b"acme",
        ),
    }
    async with bus:
        for value, key in poison.values():
            await bus.publish_raw("retrieval.requested", value, key=key)
        await bus.publish(valid)
        await until(lambda: len(handled) == 1 and len(letters) == len(poison))

    assert handled == [valid]
    by_kind: dict[str, DeadLetter] = {letter.error_type: letter for letter in letters}
    assert set(by_kind) == set(poison)
    for kind, (value, key) in poison.items():
        letter = by_kind[kind]
        assert base64.b64decode(letter.value_b64) == value, f"{kind}: original bytes not kept"
        assert letter.key_b64 == base64.b64encode(key or b"").decode()
        assert letter.original_topic == bus.topic("retrieval.requested")
        assert letter.consumer_group == "retriever"
        assert letter.error
    assert "query: String should have at most 8000 characters" not in by_kind["too_large"].error
    assert "2097" in by_kind["too_large"].error  # the size is named
    if settings.broker == "kafka":
        offsets = sorted(letter.offset for letter in letters)
        assert len(set(offsets)) == len(offsets)  # each letter points at its own record


async def test_failing_handler_is_retried_then_dead_lettered(settings: Settings) -> None:
    bus = EventBus(settings, service="test")
    attempts: dict[str, int] = {}
    letters: list[DeadLetter] = []
    done: list[str] = []

    @bus.consumer(RetrievalRequested, group="flaky")
    async def handle(event: RetrievalRequested) -> None:
        attempts[event.query] = attempts.get(event.query, 0) + 1
        if event.query == "transient" and attempts[event.query] == 1:
            raise ConnectionError("model server restarting")
        if event.query == "broken":
            raise ValueError("cannot handle this one")
        done.append(event.query)

    collect_dead_letters(bus, letters)
    async with bus:
        for query in ("transient", "broken", "after"):
            await bus.publish(RetrievalRequested(tenant_id="acme", query=query))
        await until(lambda: len(done) == 2 and len(letters) == 1)

    assert done == ["transient", "after"]
    assert attempts == {"transient": 2, "broken": settings.kafka.handler_attempts, "after": 1}
    (letter,) = letters
    assert letter.error_type == "handler_error"
    assert letter.attempts == settings.kafka.handler_attempts
    assert "ValueError: cannot handle this one" in letter.error


async def test_a_redelivered_event_is_handled_once(settings: Settings) -> None:
    bus = EventBus(settings, service="test")
    calls: list[str] = []

    @bus.consumer(RetrievalRequested, group="once")
    async def handle(event: RetrievalRequested) -> None:
        calls.append(event.query)

    event = RetrievalRequested(tenant_id="acme", query="q1")
    async with bus:
        await bus.publish(event)
        await bus.publish(event)  # the same event_id again, as after a producer retry
        await bus.publish(RetrievalRequested(tenant_id="acme", query="q2"))
        await until(lambda: "q2" in calls)
        await asyncio.sleep(0.2)
    assert calls == ["q1", "q2"]


async def test_handler_output_is_derived_so_reruns_repeat_the_same_ids(settings: Settings) -> None:
    request = sample_events()[0]
    first = request.caused(RetrievalRequested, query="q")
    again = request.caused(RetrievalRequested, query="q")
    assert first.event_id == again.event_id
    assert first.request_id == request.request_id and first.causation_id == request.event_id
    assert request.caused(RetrievalRequested, index=1, query="q").event_id != first.event_id


async def test_what_the_handlers_use_is_closed_when_the_bus_stops(settings: Settings) -> None:
    bus = EventBus(settings, service="test")
    log: list[str] = []

    @bus.consumer(RetrievalRequested, group="closing")
    async def handle(event: RetrievalRequested) -> None:
        log.append("handled")

    async def close(name: str) -> None:
        log.append(f"closed {name}")

    bus.on_stop(lambda: close("first"))
    bus.on_stop(lambda: close("second"))
    async with bus:
        await bus.publish(RetrievalRequested(tenant_id="acme", query="q"))
        await until(lambda: "handled" in log)
        assert log == ["handled"]  # nothing closed while the bus runs
    assert log == ["handled", "closed second", "closed first"]


async def test_a_process_that_records_no_spans_still_passes_the_trace_on(
    settings: Settings, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a tracer provider the bus makes no spans, and the trace that came in goes out."""
    bus = EventBus(settings, service="test")
    received: dict[str, int] = {}

    @bus.consumer(RetrievalRequested, group="untraced-hop")
    async def hop(event: RetrievalRequested) -> None:
        received["hop"] = trace.get_current_span().get_span_context().trace_id
        await bus.publish(event.caused(RetrievalCompleted, passages=[]))

    @bus.consumer(RetrievalCompleted, group="untraced-end")
    async def end(event: RetrievalCompleted) -> None:
        received["end"] = trace.get_current_span().get_span_context().trace_id

    async with bus:
        with trace.get_tracer("test").start_as_current_span("client request") as root:
            monkeypatch.setattr(tracing, "recording", lambda: False)
            await bus.publish(RetrievalRequested(tenant_id="acme", query="q"))
        await until(lambda: "end" in received)

    assert received == {"hop": root.get_span_context().trace_id, "end": root.get_span_context().trace_id}
    assert [s.name for s in spans.get_finished_spans()] == ["client request"], "spans made while off"
