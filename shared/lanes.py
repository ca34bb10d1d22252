"""Handling a consumer's records concurrently, in lanes, while committing only what is done.

A Kafka consumer handles a partition's records one after another. That is right for ordered work
and wrong for a specialist that waits seconds on an LLM: with the topics keyed by tenant, one
tenant's tasks would queue behind each other while the model server, which batches whatever
arrives, sits half idle. `Lanes` lets such a consumer run up to `limit` records at once:

- records with the same lane key run one after another, in partition order (the planner: one
  lane per request, so a request's events never overtake each other); records without a key run
  side by side (specialist tasks, retrievals: each is independent);
- a partition's committed offset only advances over a *contiguous* run of finished records, so a
  crash redelivers everything that had not finished — the same guarantee as one at a time, and the
  idempotent handlers absorb the copies;
- a full set of slots makes the dispatcher wait, which stops the consumer fetching more.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loraswarm.shared.codec import REQUEST_ID_HEADER

log = logging.getLogger("loraswarm.consumer")

LaneKey = Callable[[Any], str | None]
"""The lane of a raw record; None: a lane of its own (no order with any other record)."""

Handle = Callable[[Any], Awaitable[None]]
Done = Callable[[Any, int], Awaitable[None]]
"""Called with a record and the offset up to which its partition is now handled."""


def by_request(record: Any) -> str | None:
    """One lane per `request_id`: every event of one request in order, requests side by side.

    The id comes from the record's `request-id` header (shared/codec.py), so the dispatcher does
    not parse the value a second time; a record without the header (a producer that is not
    loraswarm's) is parsed for it. A header that disagrees with the value only puts the record
    in another lane: the handler validates the value itself.
    """
    for name, raw in record.headers or ():
        if name == REQUEST_ID_HEADER:
            return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    try:
        value = json.loads(record.value)
    except (TypeError, ValueError):
        return None  # poison: the policy dead-letters it, in a lane of its own
    request_id = value.get("request_id") if isinstance(value, dict) else None
    try:  # the header's spelling (str of a UUID), so a request's records share one lane either way
        return str(uuid.UUID(request_id)) if isinstance(request_id, str) else None
    except ValueError:
        return None  # not a UUID: poison, as above


@dataclass
class _Partition:
    """Offsets of one partition in the order they started, and which of them have finished."""

    started: deque[int] = field(default_factory=deque)
    finished: set[int] = field(default_factory=set)

    def finish(self, offset: int) -> int | None:
        """Mark `offset` finished; the last offset of the finished prefix, if it grew."""
        self.finished.add(offset)
        end = None
        while self.started and self.started[0] in self.finished:
            end = self.started.popleft()
            self.finished.discard(end)
        return end


@dataclass
class Lanes:
    limit: int
    lane_of: LaneKey | None = None
    _slots: asyncio.Semaphore = field(init=False)
    _tails: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _partitions: dict[tuple[str, int], _Partition] = field(default_factory=dict)
    _closed: bool = False

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.limit)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def submit(self, record: Any, handle: Handle, done: Done) -> None:
        """Start handling `record` once a slot is free; returns when it has started, not finished."""
        await self._slots.acquire()
        if self._closed:  # shutting down: left uncommitted, so it is delivered again
            self._slots.release()
            return
        partition = self._partitions.setdefault((record.topic, record.partition), _Partition())
        partition.started.append(record.offset)
        key = self.lane_of(record) if self.lane_of is not None else None
        before = self._tails.get(key) if key is not None else None
        task = asyncio.create_task(self._run(record, before, partition, handle, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if key is not None:
            self._tails[key] = task
            task.add_done_callback(lambda t, k=key: self._forget(k, t))  # type: ignore[misc]

    def _forget(self, key: str, task: asyncio.Task[None]) -> None:
        if self._tails.get(key) is task:
            del self._tails[key]

    async def _run(
        self,
        record: Any,
        before: asyncio.Task[None] | None,
        partition: _Partition,
        handle: Handle,
        done: Done,
    ) -> None:
        try:
            if before is not None:
                await asyncio.wait([before])  # its outcome is its own; only its end matters here
            try:
                await handle(record)
            except Exception:  # the policy handles handler errors; this is a broken dead-letter path
                log.exception("handling %s[%s]@%s failed", record.topic, record.partition, record.offset)
        finally:
            self._slots.release()
        # Not reached when cancelled (shutdown): the record stays uncommitted and comes again.
        end = partition.finish(record.offset)
        if end is not None:
            await done(record, end)

    async def close(self, grace_s: float = 0.0) -> None:
        """Shutdown: start nothing new, let what runs finish for up to `grace_s`, then stop the
        rest; what did not finish stays uncommitted and is delivered again."""
        self._closed = True
        tasks = list(self._tasks)
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
