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


async def test_each_read_sees_the_latest_write_of_either_instance(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Two instances writing one request's state in turn (a tenant moving between them): a read
    waits for the other's writes, and an instance's own writes, acknowledged but not yet read
    back by its tail, are never replaced by an older record the tail reads."""
    from tests.conftest import isolated_settings
    from tests.shared.test_bus import until

    settings = isolated_settings("kafka", tmp_path, kafka_bootstrap)
    a, b = KafkaStateStore(settings), KafkaStateStore(settings)
    await a.start()
    await b.start()
    try:
        state = a_state()
        elsewhere = next(
            t for t in (f"t{i}" for i in range(100)) if a.partition_of(t) != a.partition_of("acme")
        )
        for step in range(6):
            writer, reader = (a, b) if step % 2 == 0 else (b, a)
            state.notes = [f"step {step}"]
            await writer.put(state)
            await writer.put(state.model_copy(update={"notes": [f"step {step}", "again"]}))
            for store in (writer, reader):
                # The barrier of the request's partition; of every partition; of another tenant's
                # partition (an event naming the wrong tenant), then of the request's own.
                for tenant in ("acme", None, elsewhere):
                    read = await store.get(state.request_id, tenant)
                    assert read is not None and read.notes == [f"step {step}", "again"], (step, tenant)
        # Once each tail has read every record, the tables still hold the latest state.
        await until(lambda: a.records_read == b.records_read == 12)
        for store in (a, b):
            assert store.open_states()[0].notes == ["step 5", "again"]
            assert store._own_offsets == {p: set() for p in store._own_offsets}, "own offsets not released"
            assert store._own_latest == {}
    finally:
        await a.stop()
        await b.stop()
