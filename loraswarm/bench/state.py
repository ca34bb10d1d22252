"""`loraswarm bench state`: planner restart time against the number of requests ever finished.

A restarting planner reads its compacted state topic to the end before it handles anything
(services/planner/state.py). Three topics on the same broker, in the same run:

- none: an empty state topic;
- tombstoned: N finished requests written the way the planner writes them now (each one's
  state, then a tombstone), read once right after writing and again once the broker's log
  cleaner has compacted the topic;
- kept (the old behaviour, the baseline of the fix): N finished requests whose last record is
  their full `done` state, never tombstoned, as before this change.

Restart = a fresh `KafkaStateStore.start()`: connect, seek to the beginning, read to the end (the
read barrier). The consumer group join of the planner's event consumer is the same in every
case and is not part of it. Each figure is the median of `repeats` starts.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from loraswarm.bench.machine import describe
from loraswarm.bench.report import write_section
from loraswarm.services.planner.state import STATE_TOPIC, KafkaStateStore, PlannerState
from loraswarm.shared.envelope import utc_now
from loraswarm.shared.events import Citation, Passage, RecommendationRequested
from loraswarm.shared.kafka_client import aiokafka_security, delete_topics
from loraswarm.shared.settings import Settings
from loraswarm.shared.topics import prefixed

TENANTS = ("acme", "globex", "initech", "umbrella")
# Short enough that the broker compacts within the benchmark; production uses STATE_TOPIC_CONFIG.
BENCH_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": "3000",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "3000",
    "min.compaction.lag.ms": "0",
}


@dataclass
class Restart:
    case: str
    finished: int
    records_read: int
    seconds: float


def _state(tenant_id: str) -> PlannerState:
    request = RecommendationRequested(
        tenant_id=tenant_id, request_id=uuid.uuid4(), question="How do refunds work for annual plans?"
    )
    passage = Passage(
        text="Refunds are accepted within 30 days with a receipt; annual plans are prorated.",
        score=0.8,
        citation=Citation(doc_id="refund-policy", source="handbook", title="Refund policy"),
    )
    return PlannerState(request=request, deadline_at=utc_now() + timedelta(seconds=30), passages=[passage])


def _settings_for(settings: Settings, prefix: str) -> Settings:
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topic_prefix": prefix})})


async def _fill(settings: Settings, n: int, *, tombstone: bool) -> None:
    """Write n finished requests into the state topic: a state each, then a tombstone or `done`."""
    from aiokafka import AIOKafkaProducer

    store = KafkaStateStore(settings, topic_config=BENCH_TOPIC_CONFIG)
    await store.start()  # creates the topic and learns its partitions
    await store.stop()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        linger_ms=20,
        max_batch_size=512 * 1024,
        **aiokafka_security(settings.kafka),
    )
    await producer.start()
    try:
        futures = []
        for i in range(n):
            state = _state(TENANTS[i % len(TENANTS)])
            key = str(state.request_id).encode()
            partition = store.partition_of(state.tenant_id)
            futures.append(
                await producer.send(
                    store.topic, state.model_dump_json().encode(), key=key, partition=partition
                )
            )
            state.phase = "done"
            last = None if tombstone else state.model_dump_json().encode()
            futures.append(await producer.send(store.topic, last, key=key, partition=partition))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _restart(settings: Settings, case: str, finished: int, repeats: int) -> Restart:
    times, read = [], 0
    for _ in range(repeats):
        store = KafkaStateStore(settings, topic_config=BENCH_TOPIC_CONFIG)
        started = time.perf_counter()
        await store.start()
        times.append(time.perf_counter() - started)
        read = store.records_read
        await store.stop()
    return Restart(case, finished, read, statistics.median(times))


async def _wait_for_compaction(settings: Settings, n: int, timeout_s: float) -> tuple[int, float]:
    """Keep the log rolling (as live traffic does) until a reader sees under 1% of what was
    written (at least 100: the traffic's own records), or the timeout; returns the records a reader still sees and the seconds waited."""
    store = KafkaStateStore(settings, topic_config=BENCH_TOPIC_CONFIG)
    await store.start()
    started = time.monotonic()
    try:
        while True:
            # One short-lived request per tenant: it rolls each partition's segment once the
            # segment is older than segment.ms, which is what lets the cleaner reach the rest.
            for tenant in TENANTS:
                state = _state(tenant)
                await store.put(state)
                state.phase = "done"
                await store.put(state)
            probe = KafkaStateStore(settings, topic_config=BENCH_TOPIC_CONFIG)
            await probe.start()
            seen = probe.records_read
            await probe.stop()
            waited = time.monotonic() - started
            if seen < max(100, n // 100) or waited > timeout_s:
                return seen, waited
            await asyncio.sleep(3.0)
    finally:
        await store.stop()


def markdown(rows: list[Restart], n: int, repeats: int, compaction: tuple[int, float], bootstrap: str) -> str:
    none = rows[0].seconds
    table = [
        "| state topic | finished requests | records a restart reads | restart (s) | × empty topic |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r.case} | {r.finished:,} | {r.records_read:,} | {r.seconds:.3f} | {r.seconds / none:.2f} |"
        )
    seen, waited = compaction
    return "\n".join(
        [
            "## Planner restart vs finished requests (`loraswarm bench state`)",
            "",
            f"Machine: {describe()}; load average at the start {os.getloadavg()[0]:.1f} (shared with "
            f"other work). Kafka: local single-node KRaft at {bootstrap}. Restart: a fresh "
            f"`KafkaStateStore.start()` reading the state topic to its end (median of {repeats}).",
            f"The compacted row was measured after the broker's log cleaner ran ({waited:.0f} s of "
            f"light traffic after the writes, {seen:,} records left); the bench topic uses short "
            "segment and tombstone retention (`segment.ms` 3 s, `delete.retention.ms` 3 s) so this "
            "happens within the run; the planner's own topic uses 10 min for both "
            '(`STATE_TOPIC_CONFIG`). "kept" is the behaviour before tombstones: every finished '
            "request's `done` state stays in the topic forever.",
            "",
            *table,
            "",
        ]
    )


async def run(settings: Settings, *, n: int, repeats: int, out: Path) -> list[Restart]:
    base = f"{settings.kafka.topic_prefix}bench-state-{uuid.uuid4().hex[:8]}-"
    empty, tomb, kept = (_settings_for(settings, f"{base}{case}.") for case in ("empty", "tomb", "kept"))
    try:
        rows = [await _restart(empty, "none (empty)", 0, repeats)]
        await _fill(tomb, n, tombstone=True)
        rows.append(await _restart(tomb, "tombstoned, before compaction", n, repeats))
        compaction = await _wait_for_compaction(tomb, n, timeout_s=240.0)
        rows.append(await _restart(tomb, "tombstoned, compacted", n, repeats))
        await _fill(kept, n, tombstone=False)
        rows.append(await _restart(kept, "kept (before this change)", n, repeats))
        rows.append(await _restart(empty, "none (empty), again", 0, repeats))
    finally:
        for prefix in (empty, tomb, kept):
            await delete_topics(settings.kafka, prefixed(STATE_TOPIC, prefix.kafka.topic_prefix))
    write_section(out, "state", markdown(rows, n, repeats, compaction, settings.kafka.bootstrap_servers))
    return rows
