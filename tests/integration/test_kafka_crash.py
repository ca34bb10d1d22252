"""A consumer killed in the middle of a batch and restarted handles every event, none twice in effect.

Real Kafka, a real process, SIGKILL. "In effect": re-run handlers emit the same derived event
ids, and the next consumer group (itself under the consumer policy) applies each one once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import RetrievalCompleted, RetrievalRequested
from tests.conftest import isolated_settings
from tests.shared.test_bus import until

N = 1500


def start_consumer(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.crash_consumer"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).parents[2],
    )


def handled_ids(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize("concurrency", [1, 16], ids=["one-at-a-time", "lanes"])
async def test_killed_consumer_restarts_and_every_event_takes_effect_once(
    kafka_bootstrap: str, tmp_path: Path, concurrency: int
) -> None:
    settings = isolated_settings("kafka", tmp_path, kafka_bootstrap)
    log = tmp_path / "handled.log"
    env = {
        **os.environ,
        "LORASWARM_BROKER": "kafka",
        "LORASWARM_DATA_DIR": str(settings.data_dir),
        "LORASWARM_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "LORASWARM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "LORASWARM_KAFKA__PARTITIONS": "3",
        # One at a time: commit rarely, so the kill surely lands between handling and committing.
        # Side by side: commit after every record, so a commit that ran ahead of an unfinished
        # record (lost at the kill) would show as a missing effect.
        "LORASWARM_KAFKA__COMMIT_EVERY": "400" if concurrency == 1 else "1",
        "LORASWARM_KAFKA__COMMIT_INTERVAL_S": "5",
        "CRASH_HANDLED_LOG": str(log),
        "CRASH_CONCURRENCY": str(concurrency),
    }

    effects: Counter[str] = Counter()
    downstream = EventBus(settings, service="downstream")

    @downstream.consumer(RetrievalCompleted, group="downstream")
    async def apply(event: RetrievalCompleted) -> None:
        effects[str(event.event_id)] += 1

    inputs = [RetrievalRequested(tenant_id=f"tenant{i % 7}", query=f"q{i}") for i in range(N)]
    async with downstream:
        await downstream.publish_many(inputs)

        first = start_consumer(env)
        try:
            await until(lambda: len(handled_ids(log)) >= N // 3, timeout_s=60)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        handled_before_kill = len(handled_ids(log))
        assert handled_before_kill < N, "the consumer finished before it could be killed"

        second = start_consumer(env)
        try:
            await until(lambda: len(effects) >= N, timeout_s=90)
            await asyncio.sleep(1.0)  # let any straggling duplicate arrive
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)

    runs = Counter(handled_ids(log))
    expected = {str(e.event_id) for e in inputs}
    assert set(runs) == expected, "an event was never handled"
    rerun = sum(1 for count in runs.values() if count > 1)
    assert rerun > 0, "nothing was redelivered: the kill did not land mid-batch"
    derived = {str(e.caused(RetrievalCompleted, passages=[]).event_id) for e in inputs}
    assert set(effects) == derived
    assert max(effects.values()) == 1, "an effect was applied twice"
    print(
        f"handled before kill: {handled_before_kill}, redelivered and re-run: {rerun}, effects: {len(effects)}"
    )
