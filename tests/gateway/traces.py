"""Assertions over a request's trace as read back from Jaeger (or the trace file).

For the whole-flow test too (gateway -> planner -> retriever -> specialists -> model server):
`spans_from_jaeger` reads the trace, `one_trace` checks there is exactly one, with one root and
every other span's parent inside it, and `hop` / `child_of` check who is the parent of whom.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from loraswarm.cli.commands.trace import TraceSpan, spans_from_jaeger


def wait_for_spans(
    jaeger_url: str,
    request_id: str,
    done: Callable[[list[TraceSpan]], bool] | None = None,
    timeout_s: float = 30.0,
) -> list[TraceSpan]:
    deadline = time.monotonic() + timeout_s
    while True:
        spans = spans_from_jaeger(jaeger_url, request_id)
        if spans and (done is None or done(spans)):
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(
                f"trace of {request_id} incomplete in Jaeger after {timeout_s} s: {describe(spans)}"
            )
        time.sleep(0.5)


def describe(spans: list[TraceSpan]) -> str:
    return "; ".join(f"{s.service}:{s.name}[{s.kind}]" for s in spans) or "no spans"


def one_trace(spans: list[TraceSpan]) -> TraceSpan:
    """Exactly one trace, whose spans all hang off one root; the root."""
    traces = {s.trace_id for s in spans}
    assert len(traces) == 1, f"expected one trace, got {len(traces)}: {describe(spans)}"
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id is None]
    assert len(roots) == 1, f"expected one root, got {[r.name for r in roots]}"
    orphans = [s for s in spans if s.parent_id is not None and s.parent_id not in ids]
    assert not orphans, f"spans whose parent is missing from the trace: {describe(orphans)}"
    return roots[0]


def hop(spans: list[TraceSpan], service: str, name: str, kind: str) -> TraceSpan:
    found = [s for s in spans if s.service == service and s.name == name and s.kind == kind]
    assert len(found) == 1, f"expected one {service}:{name}[{kind}], found {len(found)} in {describe(spans)}"
    return found[0]


def child_of(child: TraceSpan, parent: TraceSpan) -> None:
    assert child.parent_id == parent.span_id, (
        f"{child.service}:{child.name} should be a child of {parent.service}:{parent.name}"
    )
