"""Lanes: concurrent handling, order within a lane, and commits only over finished records."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

import pytest

from loraswarm.shared.bus import EventBus
from loraswarm.shared.codec import encode
from loraswarm.shared.events import RetrievalRequested
from loraswarm.shared.lanes import Lanes, by_request
from loraswarm.shared.settings import Settings
from tests.shared.test_bus import until


@dataclass
class Record:
    offset: int
    value: bytes = b"{}"
    topic: str = "t"
    partition: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


class Recorder:
    """Handlers that wait for the test to release them, and what they and the commits saw."""

    def __init__(self) -> None:
        self.gates: dict[int, asyncio.Event] = {}
        self.running: set[int] = set()
        self.most_at_once = 0
        self.order: list[int] = []
        self.committed: list[int] = []

    def release(self, *offsets: int) -> None:
        for offset in offsets:
            self.gates.setdefault(offset, asyncio.Event()).set()

    async def handle(self, record: Record) -> None:
        self.running.add(record.offset)
        self.most_at_once = max(self.most_at_once, len(self.running))
        self.order.append(record.offset)
        try:
            await self.gates.setdefault(record.offset, asyncio.Event()).wait()
        finally:
            self.running.discard(record.offset)

    async def done(self, record: Record, end: int) -> None:
        self.committed.append(end)


async def test_records_run_side_by_side_up_to_the_limit() -> None:
    lanes, rec = Lanes(3), Recorder()
    for offset in range(3):
        await lanes.submit(Record(offset), rec.handle, rec.done)
    fourth = asyncio.create_task(lanes.submit(Record(3), rec.handle, rec.done))
    await until(lambda: rec.running == {0, 1, 2})
    await asyncio.sleep(0.05)
    assert not fourth.done(), "a fourth record started while three slots were taken"
    rec.release(1)
    await fourth
    await until(lambda: 3 in rec.running)
    rec.release(0, 2, 3)
    await until(lambda: not lanes.in_flight)
    assert rec.most_at_once == 3


async def test_the_commit_advances_only_over_a_finished_prefix() -> None:
    lanes, rec = Lanes(8), Recorder()
    for offset in range(5):
        await lanes.submit(Record(offset), rec.handle, rec.done)
    rec.release(2, 3)
    await asyncio.sleep(0.05)
    assert rec.committed == [], "offsets 2 and 3 finished, but 0 has not: nothing may be committed"
    rec.release(0)
    await until(lambda: rec.committed == [0])
    rec.release(1)
    await until(lambda: rec.committed == [0, 3])
    rec.release(4)
    await until(lambda: rec.committed == [0, 3, 4])


async def test_a_lane_keeps_its_records_in_order() -> None:
    def lane(record: Record) -> str:
        return "even" if record.offset % 2 == 0 else "odd"

    lanes, rec = Lanes(8, lane), Recorder()
    for offset in range(4):
        await lanes.submit(Record(offset), rec.handle, rec.done)
    await until(lambda: rec.running == {0, 1})  # one per lane: 2 waits for 0, 3 for 1
    await asyncio.sleep(0.05)
    assert rec.running == {0, 1}
    rec.release(0)
    await until(lambda: rec.running == {1, 2})
    rec.release(1, 2, 3)
    await until(lambda: not lanes.in_flight)
    assert rec.order == [0, 1, 2, 3]


async def test_closing_cancels_and_commits_nothing_unfinished() -> None:
    lanes, rec = Lanes(4), Recorder()
    for offset in range(3):
        await lanes.submit(Record(offset), rec.handle, rec.done)
    rec.release(0)
    await until(lambda: rec.committed == [0])
    await lanes.close()
    assert rec.committed == [0] and not lanes.in_flight
    await lanes.submit(Record(3), rec.handle, rec.done)  # after close: not started
    assert 3 not in rec.order


def test_by_request_reads_the_header_without_parsing_the_value() -> None:
    event = RetrievalRequested(tenant_id="acme", query="q")
    record = encode(event)
    headers = tuple((k, v.encode()) for k, v in record.headers.items())
    assert by_request(Record(0, b"not json", headers=headers)) == str(event.request_id)
    # Without the header (another producer), the value says, in the header's spelling.
    assert by_request(Record(0, record.value)) == str(event.request_id)
    upper = json.dumps({"request_id": str(event.request_id).upper()}).encode()
    assert by_request(Record(0, upper)) == str(event.request_id)


def test_by_request_leaves_poison_in_a_lane_of_its_own() -> None:
    assert by_request(Record(0, b"not json")) is None
    assert by_request(Record(0, b"[1, 2]")) is None
    assert by_request(Record(0, json.dumps({"request_id": "r-1"}).encode())) is None
    assert by_request(Record(0, json.dumps({"request_id": 7}).encode())) is None


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_one_tenants_events_run_side_by_side_only_when_asked(
    settings: Settings, concurrency: int
) -> None:
    """All keyed by one tenant, so all in one partition: Kafka's order is one at a time."""
    bus = EventBus(settings, service="test")
    running: set[str] = set()
    most = 0
    finished: list[str] = []

    @bus.consumer(RetrievalRequested, group="lanes", concurrency=concurrency)
    async def handle(event: RetrievalRequested) -> None:
        nonlocal most
        running.add(event.query)
        most = max(most, len(running))
        # Stay until `concurrency` run at once (at once for 1); a consumer that cannot get there
        # gives up after 5 s and the assertion below says so.
        with contextlib.suppress(AssertionError):
            await until(lambda: len(running) >= concurrency, timeout_s=5)
        running.discard(event.query)
        finished.append(event.query)

    async with bus:
        for i in range(4):
            await bus.publish(RetrievalRequested(tenant_id="acme", query=f"q{i}"))
        await until(lambda: len(finished) == 4)
    assert most == concurrency
    if concurrency == 1:
        assert finished == ["q0", "q1", "q2", "q3"]
