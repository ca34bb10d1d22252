"""`loraswarm trace <request_id>`: one request's trace as a waterfall in the terminal.

The spans come from Jaeger's query API (what `LORASWARM_TRACING__EXPORTER=otlp` feeds, e.g. the
local Jaeger of `loraswarm infra up jaeger`) or from the JSON-lines file of the embedded default
(`LORASWARM_TRACING__EXPORTER=file`). A request is found by the `loraswarm.request_id` attribute
that the gateway's server span and every consumer span carry; every span of the traces that
hold it is shown, so hops without that attribute (a send, an LLM call) appear too.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import typer

from loraswarm.shared.settings import Settings

REQUEST_ATTRIBUTE = "loraswarm.request_id"


class TraceNotFound(LookupError):
    pass


@dataclass(frozen=True)
class TraceSpan:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    kind: str  # server, client, producer, consumer, internal
    start_us: int
    duration_us: int
    attributes: dict[str, Any] = field(default_factory=dict)
    error: bool = False


# ---------------------------------------------------------------- Jaeger


def _jaeger_value(tag: dict[str, Any]) -> Any:
    return tag.get("value")


def spans_of_jaeger_trace(trace: dict[str, Any]) -> list[TraceSpan]:
    """Spans of one trace in the shape of Jaeger's `/api/traces` answer."""
    processes = {pid: p.get("serviceName", "?") for pid, p in (trace.get("processes") or {}).items()}
    found = []
    for span in trace.get("spans") or []:
        tags = {t["key"]: _jaeger_value(t) for t in span.get("tags") or []}
        parent = next(
            (r["spanID"] for r in span.get("references") or [] if r.get("refType") == "CHILD_OF"), None
        )
        found.append(
            TraceSpan(
                trace_id=span["traceID"],
                span_id=span["spanID"],
                parent_id=parent,
                name=span.get("operationName", ""),
                service=processes.get(span.get("processID", ""), "?"),
                kind=str(tags.pop("span.kind", "internal")),
                start_us=int(span.get("startTime", 0)),
                duration_us=int(span.get("duration", 0)),
                attributes=tags,
                error=tags.get("otel.status_code") == "ERROR" or tags.get("error") is True,
            )
        )
    return found


def spans_from_jaeger(
    base_url: str, request_id: str, *, lookback: str = "24h", timeout_s: float = 10.0
) -> list[TraceSpan]:
    """Every span of the traces in Jaeger that carry `request_id` (any service)."""
    base = base_url.rstrip("/")
    with httpx.Client(timeout=timeout_s) as client:
        services = client.get(f"{base}/api/services").raise_for_status().json().get("data") or []
        traces: dict[str, dict[str, Any]] = {}
        for service in services:
            answer = client.get(
                f"{base}/api/traces",
                params={
                    "service": service,
                    "tags": json.dumps({REQUEST_ATTRIBUTE: request_id}),
                    "lookback": lookback,
                    "limit": 20,
                },
            )
            if answer.status_code == 404:
                continue
            for trace in answer.raise_for_status().json().get("data") or []:
                traces[trace["traceID"]] = trace
        # A search answer may be trimmed to the matching service; fetch each trace whole.
        spans: list[TraceSpan] = []
        for trace_id in sorted(traces):
            whole = client.get(f"{base}/api/traces/{trace_id}").raise_for_status().json().get("data") or []
            for trace in whole:
                spans += spans_of_jaeger_trace(trace)
    return spans


# ---------------------------------------------------------------- JSON lines


def _hex(value: str | None) -> str | None:
    return None if value is None else value.removeprefix("0x")


def _micros(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1_000_000)


def span_of_json(data: dict[str, Any]) -> TraceSpan:
    """A span as `ReadableSpan.to_json` writes it (the file exporter's lines)."""
    start, end = _micros(data["start_time"]), _micros(data["end_time"])
    return TraceSpan(
        trace_id=_hex(data["context"]["trace_id"]) or "",
        span_id=_hex(data["context"]["span_id"]) or "",
        parent_id=_hex(data.get("parent_id")),
        name=data["name"],
        service=str(data.get("resource", {}).get("attributes", {}).get("service.name", "?")),
        kind=data.get("kind", "SpanKind.INTERNAL").removeprefix("SpanKind.").lower(),
        start_us=start,
        duration_us=max(0, end - start),
        attributes=data.get("attributes") or {},
        error=(data.get("status") or {}).get("status_code") == "ERROR",
    )


def spans_from_file(path: Path, request_id: str) -> list[TraceSpan]:
    """Every span in the JSON-lines file of the traces that carry `request_id`."""
    if not path.exists():
        raise TraceNotFound(f"no trace file at {path}")
    spans = []
    for line in path.read_text().splitlines():
        if line.strip():
            spans.append(span_of_json(json.loads(line)))
    wanted = {s.trace_id for s in spans if str(s.attributes.get(REQUEST_ATTRIBUTE)) == request_id}
    return [s for s in spans if s.trace_id in wanted]


# ---------------------------------------------------------------- waterfall


def ordered(spans: list[TraceSpan]) -> list[tuple[int, TraceSpan]]:
    """Spans depth-first, children by start time, each with its depth; orphans start new roots."""
    ids = {s.span_id for s in spans}
    children: defaultdict[str | None, list[TraceSpan]] = defaultdict(list)
    for span in spans:
        children[span.parent_id if span.parent_id in ids else None].append(span)
    out: list[tuple[int, TraceSpan]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children[parent], key=lambda s: (s.start_us, s.name)):
            out.append((depth, span))
            walk(span.span_id, depth + 1)

    walk(None, 0)
    return out


def render_waterfall(spans: list[TraceSpan], *, width: int = 40) -> list[str]:
    """Text lines: per trace a header, then one line per span with its bar on a common time axis."""
    lines: list[str] = []
    by_trace: defaultdict[str, list[TraceSpan]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    for trace_id, members in sorted(by_trace.items(), key=lambda kv: min(s.start_us for s in kv[1])):
        start = min(s.start_us for s in members)
        total = max(1, max(s.start_us + s.duration_us for s in members) - start)
        services = sorted({s.service for s in members})
        lines.append(
            f"trace {trace_id}  {len(members)} spans, {len(services)} services "
            f"({', '.join(services)}), {total / 1000:.1f} ms"
        )
        service_width = max(len(s) for s in services)
        for depth, span in ordered(members):
            offset = span.start_us - start
            left = int(offset / total * width)
            length = max(1, round(span.duration_us / total * width))
            bar = (" " * left + "█" * length)[:width].ljust(width)
            mark = " !" if span.error else ""
            lines.append(
                f"{offset / 1000:9.1f} ms {span.duration_us / 1000:9.1f} ms |{bar}| "
                f"{span.service.ljust(service_width)}  {'  ' * depth}{span.name} [{span.kind}]{mark}"
            )
    return lines


# ---------------------------------------------------------------- command


def trace(
    request_id: str = typer.Argument(..., help="The request id (as returned by POST /v1/recommendations)."),
    source: Literal["auto", "jaeger", "file"] = typer.Option(
        "auto",
        "--source",
        help="`jaeger`, `file`, or `auto`: the file when LORASWARM_TRACING__EXPORTER=file.",
    ),
    jaeger_url: str | None = typer.Option(
        None, "--jaeger-url", help="Jaeger's query API (default: the local Jaeger of `loraswarm infra`)."
    ),
    file: Path | None = typer.Option(
        None, "--file", help="JSON-lines trace file (default: LORASWARM_TRACING__FILE)."
    ),
    wait: float = typer.Option(
        0.0, "--wait", help="Keep looking this many seconds (spans arrive in batches)."
    ),
    width: int = typer.Option(40, "--width", min=10, help="Width of the bars."),
) -> None:
    """Draw the waterfall of one request's trace."""
    settings = Settings()
    use_file = source == "file" or (
        source == "auto" and (file is not None or settings.tracing.exporter == "file")
    )
    url = jaeger_url or f"http://127.0.0.1:{settings.infra.jaeger_query_port}"
    deadline = time.monotonic() + wait
    while True:
        try:
            spans = (
                spans_from_file(file or settings.tracing.file, request_id)
                if use_file
                else spans_from_jaeger(url, request_id)
            )
        except (TraceNotFound, httpx.HTTPError) as exc:
            spans, problem = [], str(exc) or type(exc).__name__
        else:
            problem = ""
        if spans or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if not spans:
        where = f"file {file or settings.tracing.file}" if use_file else f"Jaeger at {url}"
        typer.echo(
            f"no trace of request {request_id} in {where}{': ' + problem if problem else ''}", err=True
        )
        raise typer.Exit(1)
    for line in render_waterfall(spans, width=width):
        typer.echo(line)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("trace")(trace)
