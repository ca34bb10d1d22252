"""Bounded planner state: a finished request is tombstoned, and a restart reads only live ones.

Runs on the in-process store and on the real Kafka state topic.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from loraswarm.services.planner.state import KafkaStateStore, MemoryStateStore, PlannerState, StateStore
from loraswarm.shared.envelope import utc_now
from loraswarm.shared.events import RecommendationRequested
from loraswarm.shared.settings import Settings


def a_state(tenant_id: str = "acme") -> PlannerState:
    request = RecommendationRequested(
        tenant_id=tenant_id, request_id=uuid.uuid4(), question="How do refunds work?"
    )
    return PlannerState(request=request, deadline_at=utc_now() + timedelta(seconds=30))


def make_store(settings: Settings, remember_finished: int) -> StateStore:
    if settings.broker == "kafka":
        return KafkaStateStore(settings, remember_finished=remember_finished)
    return MemoryStateStore(remember_finished=remember_finished)


async def test_finished_requests_leave_the_table_and_are_remembered_boundedly(settings: Settings) -> None:
    store = make_store(settings, remember_finished=3)
    await store.start()
    try:
        live, finished = a_state(), [a_state() for _ in range(5)]
        await store.put(live)
        for state in finished:
            await store.put(state)
            state.phase = "done"
            await store.put(state)
        assert [s.request_id for s in store.open_states()] == [live.request_id]
        # The latest three are remembered as done (a redelivered request is ignored) ...
        for state in finished[2:]:
            remembered = await store.get(state.request_id)
            assert remembered is not None and remembered.phase == "done"
            assert remembered.passages == [] and remembered.tasks == {}
        # ... older ones are forgotten: memory does not grow with the requests served.
        assert await store.get(finished[0].request_id) is None
    finally:
        await store.stop()


async def test_a_restarted_store_reads_only_live_requests_from_kafka(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from tests.conftest import isolated_settings

    settings = isolated_settings("kafka", tmp_path, kafka_bootstrap)
    first = KafkaStateStore(settings)
    await first.start()
    live, finished = a_state("acme"), [a_state(t) for t in ("acme", "globex", "initech")]
    try:
        await first.put(live)
        for state in finished:
            await first.put(state)
            state.phase = "done"
            await first.put(state)
    finally:
        await first.stop()

    second = KafkaStateStore(settings)
    await second.start()
    try:
        assert [s.request_id for s in second.open_states()] == [live.request_id]
        assert len(second) == 1
        # It saw the tombstones, so it still knows those requests finished.
        for state in finished:
            remembered = await second.get(state.request_id)
            assert remembered is not None and remembered.phase == "done"
        # What the topic holds: one value for the live request, tombstones for the others.
        assert second.records_read == 1 + 2 * len(finished)
    finally:
        await second.stop()
