"""A request's planning state, and where it lives: in Kafka, not in one process's memory.

`KafkaStateStore` keeps every request's `PlannerState` in a compacted topic (`planner.state`),
keyed by request id and written to the partition its tenant's events use. Each planner instance
tails the whole topic into a local table; before it reads a request's state it waits until the
table has caught up with the topic's end (a read barrier), so an instance that takes over a
tenant after another one died continues from the last state that one wrote.

The topic holds live requests only. When a request is done its key gets a tombstone (a record
with no value), so compaction removes every record of it, and an instance that starts later
reads only the requests still in flight: restart time depends on what is open, not on how many
requests were ever served. Compaction settings (`STATE_TOPIC_CONFIG`, applied when the topic is
created): `cleanup.policy=compact`; `segment.ms` 10 min so the active segment, which compaction
never touches, holds at most that much history; `min.cleanable.dirty.ratio` 0.1 so the cleaner
runs once a tenth of the log is superseded; `delete.retention.ms` 10 min, how long a tombstone
itself stays, which must exceed the time an instance takes to read the topic from the start
(Kafka guarantees a reader that reaches the end within it sees every tombstone).

The barrier costs one round trip for the end offset of the request's partition (of every
partition where the caller does not name the tenant). It does not wait for the tail to
read back this instance's own writes: `put` applies a state to the table when Kafka acknowledges
it, so an offset this instance wrote counts as read, and the tail, when it reaches it, skips it
(no second parse) as it skips any record of a request older than the state the table holds.
What the barrier still waits for is a record someone else wrote: the state of a request whose
tenant another instance owned until a rebalance.

A finished request is still remembered, in memory, by the instances that saw it finish (a
bounded table of the latest `remember_finished`): a redelivered `recommendation.requested` of a
request that just finished is then ignored, not answered twice. The window is the table's size;
beyond it the outcome's derived event id still lets consumers skip a second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from datetime import datetime
from typing import Any, Literal, Protocol

from aiokafka.partitioner import DefaultPartitioner
from pydantic import BaseModel, ConfigDict, Field

from loraswarm.shared.envelope import utc_now
from loraswarm.shared.events import (
    Passage,
    RecommendationCompleted,
    RecommendationFailed,
    RecommendationRequested,
    SpecialistResult,
    TokenUsage,
)
from loraswarm.shared.settings import Settings
from loraswarm.shared.topics import prefixed

STATE_TOPIC = "planner.state"
STATE_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": str(10 * 60 * 1000),
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": str(10 * 60 * 1000),
}
REMEMBER_FINISHED = 10_000


class TaskState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: uuid.UUID
    specialist: str
    question: str
    adapter_ids: list[str]
    hop: int = 0
    result: SpecialistResult | None = None


class PlannerState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request: RecommendationRequested
    phase: Literal["retrieving", "waiting", "done"] = "retrieving"
    deadline_at: datetime
    passages: list[Passage] = Field(default_factory=list)
    tasks: dict[str, TaskState] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    usage_by_step: dict[str, TokenUsage] = Field(default_factory=dict)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    early_results: dict[str, SpecialistResult] = Field(
        default_factory=dict, description="Results of hand-off tasks that arrived before the hand-off itself."
    )
    outcome: RecommendationCompleted | RecommendationFailed | None = None
    updated_at: datetime = Field(default_factory=utc_now)

    @property
    def request_id(self) -> uuid.UUID:
        return self.request.request_id

    @property
    def tenant_id(self) -> str:
        return self.request.tenant_id

    def pending(self) -> list[TaskState]:
        return [t for t in self.tasks.values() if t.result is None]

    def tokens_used(self) -> int:
        return sum(u.input_tokens + u.output_tokens for u in self.usage_by_step.values())

    def add_usage(self, step: str, usage: TokenUsage) -> None:
        old = self.usage_by_step.get(step, TokenUsage())
        self.usage_by_step[step] = TokenUsage(
            input_tokens=old.input_tokens + usage.input_tokens,
            output_tokens=old.output_tokens + usage.output_tokens,
        )


class StateStore(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def get(self, request_id: uuid.UUID, tenant_id: str | None = None) -> PlannerState | None: ...
    async def put(self, state: PlannerState) -> None: ...
    def open_states(self) -> list[PlannerState]: ...


class FinishedRequests:
    """The latest finished requests, stripped to what deduplication needs, at most `limit`."""

    def __init__(self, limit: int = REMEMBER_FINISHED) -> None:
        self.limit = limit
        self._states: OrderedDict[uuid.UUID, PlannerState] = OrderedDict()

    def add(self, state: PlannerState) -> None:
        stripped = state.model_copy(
            update={"phase": "done", "passages": [], "tasks": {}, "early_results": {}, "outcome": None}
        )
        self._states[state.request_id] = stripped
        self._states.move_to_end(state.request_id)
        while len(self._states) > self.limit:
            self._states.popitem(last=False)

    def get(self, request_id: uuid.UUID) -> PlannerState | None:
        return self._states.get(request_id)

    def __len__(self) -> int:
        return len(self._states)


class MemoryStateStore:
    """The embedded default's store: one process, a table of the open requests."""

    def __init__(self, *, remember_finished: int = REMEMBER_FINISHED) -> None:
        self._table: dict[uuid.UUID, PlannerState] = {}
        self.finished = FinishedRequests(remember_finished)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def get(self, request_id: uuid.UUID, tenant_id: str | None = None) -> PlannerState | None:
        return self._table.get(request_id) or self.finished.get(request_id)

    async def put(self, state: PlannerState) -> None:
        if state.phase == "done":
            self._table.pop(state.request_id, None)
            self.finished.add(state)
        else:
            self._table[state.request_id] = state

    def open_states(self) -> list[PlannerState]:
        return list(self._table.values())

    def __len__(self) -> int:
        return len(self._table)


class KafkaStateStore:
    """Planner state in a compacted Kafka topic, tailed into a local table by every instance."""

    def __init__(
        self,
        settings: Settings,
        *,
        remember_finished: int = REMEMBER_FINISHED,
        topic_config: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.topic = prefixed(STATE_TOPIC, settings.kafka.topic_prefix)
        self._table: dict[uuid.UUID, PlannerState] = {}
        self.finished = FinishedRequests(remember_finished)
        self._topic_config = topic_config or STATE_TOPIC_CONFIG
        self.records_read = 0
        self._partitioner = DefaultPartitioner()
        self._tail_task: asyncio.Task[None] | None = None
        # This instance's acknowledged writes the tail has not read back yet: offsets per
        # partition (the barrier counts them as read) and, per request, its latest write's
        # offset (the tail skips that request's records up to it: the table holds newer).
        self._own_offsets: dict[int, set[int]] = {}
        self._own_latest: dict[uuid.UUID, int] = {}
        self._read_to: dict[int, int] = {}  # partition -> the tail's next offset
        self._progress = asyncio.Event()  # set (and replaced) each time the tail reads records

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from loraswarm.shared.kafka_client import aiokafka_security, ensure_topics, make_producer

        kafka = self.settings.kafka
        await ensure_topics(kafka, (STATE_TOPIC,), config=self._topic_config)
        security = aiokafka_security(kafka)
        # The bus's producer settings: a state with many passages may be past aiokafka's 1 MB default.
        self._producer = make_producer(kafka, client_id=f"{kafka.client_id}-planner-state")
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=50,
            **security,
        )
        # End offsets come from a consumer of their own: a broker answers one connection's
        # requests in order, so on the tailer's connection they would wait behind its long poll.
        self._offsets = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False, group_id=None, **security
        )
        await self._producer.start()
        await self._consumer.start()
        await self._offsets.start()
        # The producer waits for the topic's metadata (it may have been created a moment ago).
        partitions = sorted(await self._producer.partitions_for(self.topic))
        if not partitions:
            await self._consumer.stop()
            await self._offsets.stop()
            await self._producer.stop()
            raise RuntimeError(f"no partitions found for {self.topic}")
        self._partitions = [TopicPartition(self.topic, p) for p in partitions]
        self._index = {tp.partition: i for i, tp in enumerate(self._partitions)}
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)
        self._tail_task = asyncio.create_task(self._tail())
        # A first read of the whole topic may take longer than a read barrier normally does.
        await self._barrier(timeout_s=300.0)

    async def stop(self) -> None:
        if self._tail_task is not None:
            self._tail_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tail_task
        await self._consumer.stop()
        await self._offsets.stop()
        await self._producer.stop()

    async def _tail(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                self.records_read += len(records)
                own = self._own_offsets.get(tp.partition, set())
                for record in records:
                    own.discard(record.offset)
                    self._apply(record)
                if records:
                    self._read_to[tp.partition] = records[-1].offset + 1
            if batch:
                progress, self._progress = self._progress, asyncio.Event()
                progress.set()

    def _apply(self, record: Any) -> None:
        key = uuid.UUID(record.key.decode())
        latest = self._own_latest.get(key)
        if latest is not None:
            if record.offset < latest:
                return  # superseded by this instance's later write, already in the table
            del self._own_latest[key]
            if record.offset == latest:
                return  # that write itself
        if record.value is None:
            # Finished (by us or by the instance that owned it): remember, forget.
            state = self._table.pop(key, None)
            if state is not None:
                self.finished.add(state)
        else:
            self._table[key] = PlannerState.model_validate_json(record.value)

    async def _barrier(self, partitions: list[Any] | None = None, timeout_s: float = 10.0) -> None:
        """Wait until the local table holds everything written to `partitions` (all of them by
        default) so far."""
        ends = await self._offsets.end_offsets(partitions or self._partitions)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            progress = self._progress  # taken before the check: a batch read during it wakes us
            if await self._caught_up(ends):
                return
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"the planner state table did not catch up with {self.topic}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), timeout=left)

    async def _caught_up(self, ends: dict[Any, int]) -> bool:
        for tp, end in ends.items():
            position = int(await self._consumer.position(tp))
            if position >= end:
                continue
            own = self._own_offsets.get(tp.partition, set())
            # Unread records this instance wrote itself are already in the table.
            if end - position > len(own) or any(o not in own for o in range(position, end)):
                return False
        return True

    def partition_of(self, tenant_id: str) -> int:
        """The partition every event of this tenant goes to (Kafka's default partitioner)."""
        all_partitions = [tp.partition for tp in self._partitions]
        return int(self._partitioner(tenant_id.encode(), all_partitions, all_partitions))

    async def get(self, request_id: uuid.UUID, tenant_id: str | None = None) -> PlannerState | None:
        """The request's latest state, after a read barrier.

        `tenant_id`, the request's tenant where the caller knows it: every write of a request
        goes to its tenant's partition, so the barrier asks for that partition's end offset
        alone (a smaller request to the broker, about a third less time here) and waits for no
        other partition's unread records. A state found under another tenant (an event naming
        the wrong one) is read again behind its own partition's barrier.
        """
        if tenant_id is None:
            await self._barrier()
            return self._lookup(request_id)
        await self._barrier([self._partition_for(tenant_id)])
        state = self._lookup(request_id)
        if state is not None and state.tenant_id != tenant_id:
            await self._barrier([self._partition_for(state.tenant_id)])
            state = self._lookup(request_id)
        return state

    def _lookup(self, request_id: uuid.UUID) -> PlannerState | None:
        return self._table.get(request_id) or self.finished.get(request_id)

    def _partition_for(self, tenant_id: str) -> Any:
        return self._partitions[self._index[self.partition_of(tenant_id)]]

    async def put(self, state: PlannerState) -> None:
        """Save an open request's state; a done one is tombstoned (its outcome is published)."""
        state = state.model_copy(update={"updated_at": utc_now()})
        done = state.phase == "done"
        written = await self._producer.send_and_wait(
            self.topic,
            None if done else state.model_dump_json().encode(),
            key=str(state.request_id).encode(),
            partition=self.partition_of(state.tenant_id),
        )
        if written.offset >= self._read_to.get(written.partition, 0):  # not read back yet
            self._own_offsets.setdefault(written.partition, set()).add(written.offset)
            self._own_latest[state.request_id] = written.offset
        if done:
            self._table.pop(state.request_id, None)
            self.finished.add(state)
        else:
            self._table[state.request_id] = state

    def open_states(self) -> list[PlannerState]:
        return list(self._table.values())

    def __len__(self) -> int:
        return len(self._table)
