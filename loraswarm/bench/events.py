"""`loraswarm bench events`: events through one real Kafka hop, against bare aiokafka.

Two runs on a fresh one-partition topic each, on the same broker in the same process:

- baseline: a bare aiokafka producer and consumer (no validation, no policy, auto-commit off,
  one commit at the end) — what Kafka itself costs on this machine;
- loraswarm: `EventBus.publish` → `EventBus.consumer` handler, with the whole consumer policy
  (decode + pydantic validation, processed-id store, commit after handling).

Each run measures throughput (a burst of N events, first send to last handled) and hop latency
(N events paced at a fixed rate, handled-time minus send-time, p50/p99). The two runs alternate
for a few rounds and each figure is the median over them, the ratio the median of each round's
own ratio: on a machine shared with other work one baseline run alone was seen at 15,000 and at
33,000 events/s within minutes.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from loraswarm.bench.machine import describe
from loraswarm.bench.report import percentile, write_section
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import RetrievalRequested
from loraswarm.shared.kafka_client import delete_topics, ensure_topics
from loraswarm.shared.settings import Settings

SendFn = Callable[[str], Awaitable[None]]


@dataclass
class HopResult:
    name: str
    events_per_s: float
    p50_ms: float
    p99_ms: float
    ratios: tuple[float, ...] = ()  # events/s ÷ the baseline's, per round (the loraswarm row)


async def _drain(received: dict[str, float], n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(received) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(received)} of {n} events arrived in {timeout_s:.0f} s")
        await asyncio.sleep(0.01)


async def _paced(send: SendFn, n: int, rate: float, sent: dict[str, float]) -> None:
    start = time.perf_counter()
    for i in range(n):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        key = uuid.uuid4().hex
        sent[key] = time.perf_counter()
        await send(key)


Phase = tuple[float, list[float]]  # (events/s, hop latencies in ms)


async def _baseline_phase(settings: Settings, n: int, rate: float, paced: bool) -> Phase:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    kafka = settings.kafka
    topic = f"{kafka.topic_prefix}baseline-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka.model_copy(update={"partitions": 1}), (topic,))
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=f"g-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await producer.start()
    await consumer.start()
    sent: dict[str, float] = {}
    received: dict[str, float] = {}

    async def consume() -> None:
        async for record in consumer:
            received[record.value.decode()] = time.perf_counter()
            if len(received) >= n:
                await consumer.commit()
                return

    async def send(key: str) -> None:
        await producer.send_and_wait(topic, key.encode(), key=b"bench")

    task = asyncio.create_task(consume())
    t0 = time.perf_counter()
    if paced:
        await _paced(send, n, rate, sent)
    else:
        keys = [uuid.uuid4().hex for _ in range(n)]
        futures = []
        for k in keys:
            sent[k] = time.perf_counter()
            futures.append(await producer.send(topic, k.encode(), key=b"bench"))
        await asyncio.gather(*futures)
    await asyncio.wait_for(task, 120)
    elapsed = max(received.values()) - t0
    await consumer.stop()
    await producer.stop()
    return n / elapsed, [(received[k] - sent[k]) * 1000 for k in sent]


async def _loraswarm_phase(settings: Settings, n: int, rate: float, paced: bool, data_dir: Path) -> Phase:
    run = uuid.uuid4().hex[:8]
    s = settings.model_copy(
        update={
            "broker": "kafka",
            "data_dir": data_dir / run,
            "kafka": settings.kafka.model_copy(
                update={"partitions": 1, "topic_prefix": f"{settings.kafka.topic_prefix}{run}."}
            ),
        }
    )
    bus = EventBus(s, service="bench")
    sent: dict[str, float] = {}
    received: dict[str, float] = {}

    @bus.consumer(RetrievalRequested, group="bench")
    async def handle(event: RetrievalRequested) -> None:
        received[event.query] = time.perf_counter()

    async def send(key: str) -> None:
        await bus.publish(RetrievalRequested(tenant_id="bench", query=key))

    async with bus:
        t0 = time.perf_counter()
        if paced:
            await _paced(send, n, rate, sent)
        else:
            keys = [uuid.uuid4().hex for _ in range(n)]
            for k in keys:
                sent[k] = time.perf_counter()
            await bus.publish_many([RetrievalRequested(tenant_id="bench", query=k) for k in keys])
        await _drain(received, n, 120)
        elapsed = max(received.values()) - t0
    return n / elapsed, [(received[k] - sent[k]) * 1000 for k in sent]


def _result(name: str, burst: Phase, paced: Phase) -> HopResult:
    return HopResult(name, burst[0], percentile(paced[1], 50), percentile(paced[1], 99))


async def bench_baseline(settings: Settings, n: int, rate: float) -> HopResult:
    burst = await _baseline_phase(settings, n, rate, paced=False)
    paced = await _baseline_phase(settings, n, rate, paced=True)
    return _result("bare aiokafka (baseline)", burst, paced)


async def bench_loraswarm(settings: Settings, n: int, rate: float, data_dir: Path) -> HopResult:
    burst = await _loraswarm_phase(settings, n, rate, False, data_dir)
    paced = await _loraswarm_phase(settings, n, rate, True, data_dir)
    return _result("loraswarm EventBus (policy on)", burst, paced)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def over_rounds(rounds: list[list[HopResult]]) -> list[HopResult]:
    """Each path's medians over the rounds; the loraswarm row carries each round's ratio."""
    ratios = tuple(r[1].events_per_s / r[0].events_per_s for r in rounds)
    return [
        HopResult(
            rounds[0][i].name,
            _median([r[i].events_per_s for r in rounds]),
            _median([r[i].p50_ms for r in rounds]),
            _median([r[i].p99_ms for r in rounds]),
            ratios if i == 1 else (),
        )
        for i in range(2)
    ]


def markdown(results: list[HopResult], n: int, rate: float, bootstrap: str) -> str:
    base, bus = results
    ratios = bus.ratios or (bus.events_per_s / base.events_per_s,)
    rows = [
        "| path | events/s (burst) | × baseline | hop p50 (ms) | hop p99 (ms) |",
        "|---|---:|---:|---:|---:|",
        f"| {base.name} | {base.events_per_s:,.0f} | 1.00 | {base.p50_ms:.2f} | {base.p99_ms:.2f} |",
        f"| {bus.name} | {bus.events_per_s:,.0f} | {_median(list(ratios)):.2f} | {bus.p50_ms:.2f} | {bus.p99_ms:.2f} |",
    ]
    return "\n".join(
        [
            "## Events: one real Kafka hop (`loraswarm bench events`)",
            "",
            f"Machine: {describe()}. Kafka: local single-node KRaft at {bootstrap}, one partition, acks=all.",
            f"Throughput: a burst of {n:,} events, first send to last handled. Latency: {n:,} events paced at "
            f"{rate:,.0f}/s, handled minus sent. Goal: ≥ 0.5× the baseline's events/s, hop p50 ≤ 2 ms.",
            f"Rounds: {len(ratios)}, the baseline and the EventBus alternating; each figure is the median over "
            "the rounds, × baseline the median of each round's own ratio ("
            + ", ".join(f"{r:.2f}" for r in ratios)
            + ").",
            "",
            *rows,
            "",
        ]
    )


async def run(settings: Settings, *, n: int, rate: float, out: Path, rounds: int = 3) -> list[HopResult]:
    import tempfile

    # Every topic of this run shares one prefix, deleted at the end.
    prefix = f"{settings.kafka.topic_prefix}bench-{uuid.uuid4().hex[:8]}-"
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"topic_prefix": prefix})}
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            measured = [
                [await bench_baseline(settings, n, rate), await bench_loraswarm(settings, n, rate, Path(tmp))]
                for _ in range(rounds)
            ]
    finally:
        await delete_topics(settings.kafka, prefix)
    results = over_rounds(measured)
    write_section(out, "events", markdown(results, n, rate, settings.kafka.bootstrap_servers))
    return results
