"""Graceful shutdown of the event bus, with work in flight, on the in-process broker and on Kafka.

Stopping a bus stops handling new records, lets the running handlers finish within the grace,
commits what finished and hands back (uncommitted) what did not: a consumer of the same group
that starts afterwards gets exactly the records that were not finished.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import RetrievalRequested
from loraswarm.shared.settings import Settings
from tests.shared.test_bus import until


def events(n: int) -> list[RetrievalRequested]:
    return [RetrievalRequested(tenant_id="acme", request_id=uuid.uuid4(), query=f"q{i}") for i in range(n)]


async def handed_back(settings: Settings, tmp_path: Path, group: str, expected: int) -> set[str]:
    """The queries a fresh member of `group` receives (its own processed-id store: nothing skipped)."""
    fresh = settings.model_copy(update={"data_dir": tmp_path / "second-member"})
    bus = EventBus(fresh, service="second")
    got: set[str] = set()

    @bus.consumer(RetrievalRequested, group=group)
    async def handle(event: RetrievalRequested) -> None:
        got.add(event.query)

    async with bus:
        await until(lambda: len(got) >= expected, timeout_s=60)
        await asyncio.sleep(1.0)  # anything more (a finished record handed back) would show now
    return got


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_stop_lets_running_handlers_finish_and_hands_back_the_rest(
    settings: Settings, tmp_path: Path, concurrency: int
) -> None:
    settings.shutdown_grace_s = 6.0
    bus = EventBus(settings, service="stopping")
    started: list[str] = []
    finished: list[str] = []

    @bus.consumer(RetrievalRequested, group="graceful", concurrency=concurrency)
    async def handle(event: RetrievalRequested) -> None:
        started.append(event.query)
        await asyncio.sleep(1.0)
        finished.append(event.query)

    sent = events(6)
    await bus.start()
    for event in sent:
        await bus.publish(event)
    await until(lambda: len(started) >= 1)
    began = time.monotonic()
    await bus.stop()
    took = time.monotonic() - began

    assert took < settings.shutdown_grace_s
    assert finished and sorted(finished) == sorted(started)  # nothing cut off half-way
    assert len(finished) < len(sent)  # stopping stopped the rest
    if settings.broker == "kafka":
        rest = {e.query for e in sent} - set(finished)
        assert await handed_back(settings, tmp_path, "graceful", len(rest)) == rest


async def test_a_handler_longer_than_the_grace_is_handed_back(settings: Settings, tmp_path: Path) -> None:
    settings.shutdown_grace_s = 2.0
    bus = EventBus(settings, service="stopping")
    started: list[str] = []

    @bus.consumer(RetrievalRequested, group="graceful-long")
    async def handle(event: RetrievalRequested) -> None:
        started.append(event.query)
        await asyncio.sleep(60)

    [event] = events(1)
    await bus.start()
    await bus.publish(event)
    await until(lambda: started == [event.query])
    began = time.monotonic()
    await bus.stop()
    assert time.monotonic() - began < settings.shutdown_grace_s
    if settings.broker == "kafka":
        assert await handed_back(settings, tmp_path, "graceful-long", 1) == {event.query}
