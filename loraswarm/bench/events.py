"""`loraswarm bench events`: events through one real Kafka hop, against bare aiokafka.

Two runs on a fresh one-partition topic each, on the same broker in the same process:

- baseline: a bare aiokafka producer and consumer (no validation, no policy, auto-commit off,
  one commit at the end) — what Kafka itself costs on this machine;
- loraswarm: `EventBus.publish` → `EventBus.consumer` handler, with the whole consumer policy
  (decode + pydantic validation, processed-id store, commit after handling), in a process set
  up as `loraswarm serve` sets up a service (its imports' objects frozen: shared/gc_freeze.py);
- the same EventBus with those objects unfrozen: every service's process before the freeze.

Each run measures throughput (a burst of N events, first send to last handled) and hop latency
(N events paced at a fixed rate, handled-time minus send-time, p50/p99). The runs alternate
for a few rounds and each figure is the median over them, the ratio the median of each round's
own ratio: on a machine shared with other work one baseline run alone was seen at 15,000 and at
33,000 events/s within minutes.
"""

from __future__ import annotations

import asyncio
import gc
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
from loraswarm.shared.gc_freeze import freeze_startup_objects
from loraswarm.shared.kafka_client import delete_topics, ensure_topics
from loraswarm.shared.settings import Settings

SendFn = Callable[[str], Awaitable[None]]


@dataclass
class HopResult:
    name: str
    events_per_s: float
    p50_ms: float
    p99_ms: float
    ratios: tuple[float, ...] = ()  # events/s ÷ the baseline's, per round (the EventBus rows)


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


FROZEN = "loraswarm EventBus (policy on)"
NOT_FROZEN = "loraswarm EventBus, startup objects not frozen"


async def bench_loraswarm(
    settings: Settings, n: int, rate: float, data_dir: Path, *, frozen: bool = True
) -> HopResult:
    """The EventBus in this process as `loraswarm serve` sets a service's up (the objects of its
    imports frozen, shared/gc_freeze.py), or with them back in the collector's walk (`frozen`
    False): the process every service ran before the freeze, measured in the same round."""
    if not frozen:
        gc.unfreeze()
    try:
        burst = await _loraswarm_phase(settings, n, rate, False, data_dir)
        paced = await _loraswarm_phase(settings, n, rate, True, data_dir)
    finally:
        if not frozen:
            freeze_startup_objects()
    return _result(FROZEN if frozen else NOT_FROZEN, burst, paced)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def over_rounds(rounds: list[list[HopResult]]) -> list[HopResult]:
    """Each path's medians over the rounds; every path after the baseline (the first) carries
    each round's ratio to that round's baseline."""
    return [
        HopResult(
            rounds[0][i].name,
            _median([r[i].events_per_s for r in rounds]),
            _median([r[i].p50_ms for r in rounds]),
            _median([r[i].p99_ms for r in rounds]),
            tuple(r[i].events_per_s / r[0].events_per_s for r in rounds) if i else (),
        )
        for i in range(len(rounds[0]))
    ]


def markdown(results: list[HopResult], n: int, rate: float, bootstrap: str) -> str:
    base = results[0]

    def ratios(r: HopResult) -> tuple[float, ...]:
        return r.ratios or (r.events_per_s / base.events_per_s,)

    rows = [
        "| path | events/s (burst) | × baseline | hop p50 (ms) | hop p99 (ms) |",
        "|---|---:|---:|---:|---:|",
        f"| {base.name} | {base.events_per_s:,.0f} | 1.00 | {base.p50_ms:.2f} | {base.p99_ms:.2f} |",
    ] + [
        f"| {r.name} | {r.events_per_s:,.0f} | {_median(list(ratios(r))):.2f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |"
        for r in results[1:]
    ]
    return "\n".join(
        [
            "## Events: one real Kafka hop (`loraswarm bench events`)",
            "",
            f"Machine: {describe()}. Kafka: local single-node KRaft at {bootstrap}, one partition, acks=all.",
            f"Throughput: a burst of {n:,} events, first send to last handled. Latency: {n:,} events paced at "
            f"{rate:,.0f}/s, handled minus sent. Goal: ≥ 0.5× the baseline's events/s, hop p50 ≤ 2 ms.",
            f"Rounds: {len(ratios(results[1]))}, the baseline and the EventBus alternating; each figure is the median over "
            "the rounds, × baseline the median of each round's own ratio ("
            + ", ".join(f"{r:.2f}" for r in ratios(results[1]))
            + ").",
            "The process is set up as `loraswarm serve` sets up a service: the objects of its imports frozen "
            "out of the garbage collector's walk (shared/gc_freeze.py). The last row is the same EventBus with "
            "them unfrozen, in the same rounds: every service's process before the freeze.",
            "",
            *rows,
            "",
        ]
    )


async def run(settings: Settings, *, n: int, rate: float, out: Path, rounds: int = 3) -> list[HopResult]:
    import tempfile

    # This process as `loraswarm serve` sets up a service: what its imports made, frozen.
    freeze_startup_objects()
    # Every topic of this run shares one prefix, deleted at the end.
    prefix = f"{settings.kafka.topic_prefix}bench-{uuid.uuid4().hex[:8]}-"
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"topic_prefix": prefix})}
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            measured = [
                [
                    await bench_baseline(settings, n, rate),
                    await bench_loraswarm(settings, n, rate, Path(tmp)),
                    await bench_loraswarm(settings, n, rate, Path(tmp), frozen=False),
                ]
                for _ in range(rounds)
            ]
    finally:
        await delete_topics(settings.kafka, prefix)
    results = over_rounds(measured)
    write_section(out, "events", markdown(results, n, rate, settings.kafka.bootstrap_servers))
    return results
