"""`loraswarm bench pipeline`: what the orchestration itself costs, on real Kafka.

8 tenants send requests open-loop through the real planner (its Kafka-held state, plans,
fan-out, composition) over real Kafka. The primary LLM is an instant OpenAI-compatible endpoint
and the retriever and specialists answer at once, so what is measured is the orchestration: the
end-to-end latency minus the time inside LLM calls. Baseline, same run, same rate: one bus round
trip (request -> a handler that answers at once -> client), the floor any design on this bus pays.

The planner runs twice: in this process, beside the stand-in retriever, specialists and client
(one event loop for all of them), and in its own process as deployed (`loraswarm serve planner`:
its imports frozen out of the garbage collector's walk, shared/gc_freeze.py), with the rest here.
Each row starts its clock after one request has gone all the way through (consumers assigned).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from fastapi import FastAPI

from loraswarm.bench.machine import describe
from loraswarm.bench.report import percentile, write_section
from loraswarm.cli.serve import child_env, command
from loraswarm.services.planner.app import running
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import (
    Citation,
    Passage,
    RecommendationCompleted,
    RecommendationFailed,
    RecommendationRequested,
    RetrievalCompleted,
    RetrievalRequested,
    SpecialistResult,
    SpecialistTask,
)
from loraswarm.shared.kafka_client import delete_topics
from loraswarm.shared.ports import free_port
from loraswarm.shared.settings import Settings

TENANTS = [f"bench{i}" for i in range(8)]
PLAN = json.dumps(
    {"tasks": [{"specialist": "policy", "question": "q"}, {"specialist": "tone", "question": "q"}]}
)
COMPOSED = json.dumps({"summary": "s", "recommendations": [{"title": "t", "text": "x", "sources": [1]}]})
PASSAGE = Passage(text="p", score=1.0, citation=Citation(doc_id="d", source="s"))


def _instant_llm() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(body: dict[str, Any]) -> dict[str, Any]:
        name = body["response_format"]["json_schema"]["name"]
        content = PLAN if name == "plan" else COMPOSED
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "instant",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app


def _serve_llm() -> tuple[str, uvicorn.Server, threading.Thread]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_instant_llm(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}/v1", server, thread


def _tenants(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for tenant in TENANTS:
        config = {
            "tenant_id": tenant,
            "limits": {"deadline_s": 60, "max_specialists": 2},
            "specialists": [
                {"name": "policy", "description": "policies", "instructions": "i"},
                {"name": "tone", "description": "tone", "instructions": "i"},
            ],
        }
        (folder / f"{tenant}.yaml").write_text(yaml.safe_dump(config))


@dataclass
class PipelineResult:
    name: str
    p50_ms: float
    p95_ms: float
    per_minute: float
    overhead_p50_ms: float | None
    overhead_p95_ms: float | None


async def _open_loop(
    bus: EventBus, n: int, rate: float, received: dict[str, float]
) -> tuple[dict[str, float], float]:
    sent: dict[str, float] = {}
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        request = RecommendationRequested(
            tenant_id=TENANTS[i % len(TENANTS)], question="Which refund applies?"
        )
        sent[str(request.request_id)] = time.perf_counter()
        await bus.publish(request)
    deadline = time.monotonic() + 120
    while len(received) < n and time.monotonic() < deadline:  # noqa: ASYNC110 (a bounded poll)
        await asyncio.sleep(0.02)
    return sent, time.perf_counter() - start


IN_PROCESS = "planner in this process"
OWN_PROCESS = "planner in its own process (`loraswarm serve planner`)"
Planner = Callable[[Settings], AbstractAsyncContextManager[object]]


@contextlib.asynccontextmanager
async def _planner_process(settings: Settings) -> AsyncIterator[object]:
    """`loraswarm serve planner` on these settings, as deployed; its output in the data folder."""
    env = child_env(
        settings,
        LORASWARM_ORCHESTRATION__PRIMARY_LLM_BASE_URL=str(settings.orchestration.primary_llm_base_url),
        LORASWARM_TRACING__EXPORTER="none",
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with (settings.data_dir / "planner.log").open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *command("planner", "--broker", "kafka"), env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), settings.shutdown_grace_s + 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _warm_up(bus: EventBus, received: dict[str, float], timeout_s: float = 180) -> None:
    """One request all the way through (the planner's and this process's consumers assigned,
    their first reads done) before the clock starts; not counted."""
    request = RecommendationRequested(tenant_id=TENANTS[0], question="Which refund applies?")
    await bus.publish(request)
    deadline = time.monotonic() + timeout_s
    while str(request.request_id) not in received:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the warm-up request did not complete within {timeout_s:.0f} s (a planner in its own "
                "process writes planner.log in its data folder)"
            )
        await asyncio.sleep(0.05)
    received.clear()


async def bench_planner(
    settings: Settings, n: int, rate: float, planner: Planner = running, name: str = IN_PROCESS
) -> PipelineResult:
    completed: dict[str, RecommendationCompleted] = {}
    received: dict[str, float] = {}
    async with planner(settings):
        bus = EventBus(settings, service="bench-world")

        @bus.consumer(RetrievalRequested, group="bench-retriever")
        async def retrieve(event: RetrievalRequested) -> None:
            await bus.publish(event.caused(RetrievalCompleted, passages=[PASSAGE]))

        @bus.consumer(SpecialistTask, group="bench-specialists")
        async def answer(task: SpecialistTask) -> None:
            await bus.publish(
                task.caused(SpecialistResult, specialist=task.specialist, task_id=task.event_id, answer="a")
            )

        @bus.consumer(RecommendationCompleted, group="bench-client")
        async def done(event: RecommendationCompleted) -> None:
            received[str(event.request_id)] = time.perf_counter()
            completed[str(event.request_id)] = event

        @bus.consumer(RecommendationFailed, group="bench-client-failed")
        async def failed(event: RecommendationFailed) -> None:
            received[str(event.request_id)] = time.perf_counter()

        async with bus:
            await _warm_up(bus, received)
            completed.clear()
            sent, elapsed = await _open_loop(bus, n, rate, received)
    latencies = [(received[k] - sent[k]) * 1000 for k in sent if k in received]
    overheads = [
        e.timings_ms.get("total", 0) - e.timings_ms.get("llm_plan", 0) - e.timings_ms.get("llm_compose", 0)
        for e in completed.values()
    ]
    return PipelineResult(
        f"{name}, {len(completed)}/{n} completed",
        percentile(latencies, 50),
        percentile(latencies, 95),
        len(received) / elapsed * 60,
        percentile(overheads, 50),
        percentile(overheads, 95),
    )


async def bench_round_trip(settings: Settings, n: int, rate: float) -> PipelineResult:
    received: dict[str, float] = {}
    bus = EventBus(settings, service="bench-echo")

    @bus.consumer(RecommendationRequested, group="bench-echo")
    async def echo(request: RecommendationRequested) -> None:
        await bus.publish(request.caused(RecommendationCompleted, recommendations=[]))

    @bus.consumer(RecommendationCompleted, group="bench-echo-client")
    async def done(event: RecommendationCompleted) -> None:
        received[str(event.request_id)] = time.perf_counter()

    async with bus:
        sent, elapsed = await _open_loop(bus, n, rate, received)
    latencies = [(received[k] - sent[k]) * 1000 for k in sent if k in received]
    return PipelineResult(
        "baseline: one bus round trip",
        percentile(latencies, 50),
        percentile(latencies, 95),
        len(received) / elapsed * 60,
        None,
        None,
    )


def markdown(results: list[PipelineResult], n: int, rate: float) -> str:
    rows = [
        "| path | e2e p50 (ms) | e2e p95 (ms) | requests/min | overhead p50 (ms) | overhead p95 (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        over = (
            (f"{r.overhead_p50_ms:.1f}", f"{r.overhead_p95_ms:.1f}")
            if r.overhead_p50_ms is not None
            else ("-", "-")
        )
        rows.append(
            f"| {r.name} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.per_minute:,.0f} | {over[0]} | {over[1]} |"
        )
    return "\n".join(
        [
            "## Pipeline: orchestration overhead (`loraswarm bench pipeline`)",
            "",
            f"Machine: {describe()}. Real local Kafka; {n} requests over {len(TENANTS)} tenants, open loop at {rate:g}/s; "
            "the primary LLM answers instantly and the retriever and specialists at once, so the overhead column "
            "(end-to-end minus time inside LLM calls) is the planner's own cost: 6 Kafka hops, state writes to the "
            "compacted state topic with a read barrier, plan validation, fan-out, composition. The planner runs in this "
            "process (one event loop with the stand-in services and the client) and then in its own, as deployed "
            "(`loraswarm serve planner`, its imports' objects frozen out of the garbage collector's walk); each row's "
            "clock starts after one request has gone through. Goal: overhead p50 ≤ 20 ms. "
            "End-to-end latency with the real model server is dominated by generation on the CPU and is not in this table.",
            "",
            *rows,
            "",
        ]
    )


async def run(settings: Settings, *, n: int, rate: float, out: Path) -> list[PipelineResult]:
    prefix = f"{settings.kafka.topic_prefix}bench-pipeline-{uuid.uuid4().hex[:8]}-"
    url, server, thread = _serve_llm()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            s = settings.model_copy(deep=True)
            s.broker = "kafka"
            s.data_dir = Path(tmp) / "data"
            s.kafka.topic_prefix = prefix
            s.orchestration.tenants_dir = Path(tmp) / "tenants"
            s.orchestration.primary_llm_base_url = url
            _tenants(s.orchestration.tenants_dir)
            base = s.model_copy(deep=True)
            base.kafka.topic_prefix = prefix + "echo-"
            own = s.model_copy(deep=True)
            own.kafka.topic_prefix = prefix + "own-"
            own.data_dir = Path(tmp) / "own-data"
            results = [
                await bench_round_trip(base, n, rate),
                await bench_planner(s, n, rate),
                await bench_planner(own, n, rate, _planner_process, OWN_PROCESS),
            ]
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        await delete_topics(settings.kafka, prefix)
    write_section(out, "pipeline", markdown(results, n, rate))
    return results
