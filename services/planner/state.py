"""A request's planning state, and where it lives: in Kafka, not in one process's memory.

`KafkaStateStore` keeps every request's `PlannerState` in a compacted topic (`planner.state`),
keyed by request id and written to the partition its tenant's events use. Each planner instance
tails the whole topic into a local table; before it reads a request's state it waits until the
table has caught up with the topic's end (a read barrier), so an instance that takes over a
tenant after another one died continues from the last state that one wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import datetime, timedelta
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
    async def get(self, request_id: uuid.UUID) -> PlannerState | None: ...
    async def put(self, state: PlannerState) -> None: ...
    def open_states(self) -> list[PlannerState]: ...


class MemoryStateStore:
    """The embedded default's store: one process, one table."""

    def __init__(self) -> None:
        self._table: dict[uuid.UUID, PlannerState] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def get(self, request_id: uuid.UUID) -> PlannerState | None:
        return self._table.get(request_id)

    async def put(self, state: PlannerState) -> None:
        self._table[state.request_id] = state

    def open_states(self) -> list[PlannerState]:
        return [s for s in self._table.values() if s.phase != "done"]


class KafkaStateStore:
    """Planner state in a compacted Kafka topic, tailed into a local table by every instance."""

    def __init__(self, settings: Settings, *, done_retention: timedelta = timedelta(hours=24)) -> None:
        self.settings = settings
        self.topic = prefixed(STATE_TOPIC, settings.kafka.topic_prefix)
        self._table: dict[uuid.UUID, PlannerState] = {}
        self._done_retention = done_retention
        self._partitioner = DefaultPartitioner()
        self._tail_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        from loraswarm.shared.bus import _aiokafka_security, ensure_topics

        kafka = self.settings.kafka
        await ensure_topics(kafka, (STATE_TOPIC,), config={"cleanup.policy": "compact"})
        security = _aiokafka_security(kafka)
        self._producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", **security)
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
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)
        self._tail_task = asyncio.create_task(self._tail())
        await self._barrier()

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
            for records in batch.values():
                for record in records:
                    key = uuid.UUID(record.key.decode())
                    if record.value is None:
                        self._table.pop(key, None)
                    else:
                        self._table[key] = PlannerState.model_validate_json(record.value)

    async def _barrier(self, timeout_s: float = 10.0) -> None:
        """Wait until the local table holds everything written to the topic so far."""
        ends = await self._offsets.end_offsets(self._partitions)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not await self._caught_up(ends):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"the planner state table did not catch up with {self.topic}")
            await asyncio.sleep(0.005)

    async def _caught_up(self, ends: dict[Any, int]) -> bool:
        for tp, end in ends.items():
            if int(await self._consumer.position(tp)) < end:
                return False
        return True

    def partition_of(self, tenant_id: str) -> int:
        """The partition every event of this tenant goes to (Kafka's default partitioner)."""
        all_partitions = [tp.partition for tp in self._partitions]
        return int(self._partitioner(tenant_id.encode(), all_partitions, all_partitions))

    async def get(self, request_id: uuid.UUID) -> PlannerState | None:
        await self._barrier()
        return self._table.get(request_id)

    async def put(self, state: PlannerState) -> None:
        state = state.model_copy(update={"updated_at": utc_now()})
        await self._producer.send_and_wait(
            self.topic,
            state.model_dump_json().encode(),
            key=str(state.request_id).encode(),
            partition=self.partition_of(state.tenant_id),
        )
        self._table[state.request_id] = state
        self._forget_old_done()

    def _forget_old_done(self) -> None:
        cutoff = utc_now() - self._done_retention
        for request_id in [k for k, s in self._table.items() if s.phase == "done" and s.updated_at < cutoff]:
            del self._table[request_id]

    def open_states(self) -> list[PlannerState]:
        return [s for s in self._table.values() if s.phase != "done"]
