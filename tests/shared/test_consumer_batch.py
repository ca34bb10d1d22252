"""A batch is decoded and its processed ids looked up together; handling and committing stay per record.

The consumer policy on a batch of records, with a stand-in for aiokafka's consumer (its
`assignment` and `commit`) and the real processed-id store on disk: a process that dies in the
middle of a batch has committed only records whose handlers returned, and its successor, reading
the same store, runs what was not handled and skips what was.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from loraswarm.shared.consumer import ConsumerPolicy
from loraswarm.shared.events import DeadLetter, RetrievalRequested
from loraswarm.shared.processed import ProcessedEvents
from loraswarm.shared.settings import KafkaSettings

TOPIC = "retrieval.requested"
TP = TopicPartition(TOPIC, 0)


class ProcessDied(BaseException):
    """The process ends inside a handler (not an error the policy retries or dead-letters)."""


@dataclass
class Record:
    offset: int
    value: bytes
    key: bytes = b"acme"
    topic: str = TOPIC
    partition: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Consumer:
    """What the policy uses of aiokafka's consumer."""

    commits: list[dict[TopicPartition, int]] = field(default_factory=list)

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    @property
    def committed(self) -> int:
        return max((c[TP] for c in self.commits), default=0)


def records_of(events: list[RetrievalRequested], first_offset: int = 0) -> list[Record]:
    return [Record(first_offset + i, e.model_dump_json().encode()) for i, e in enumerate(events)]


def policy(
    store: ProcessedEvents, handled: list[str], *, die_on: str | None, commit_every: int
) -> ConsumerPolicy[Any]:
    async def handle(event: RetrievalRequested) -> None:
        if event.query == die_on:
            raise ProcessDied
        handled.append(event.query)

    async def dead_letter(letter: DeadLetter, key: bytes | None) -> None:
        raise AssertionError(f"nothing here is poison: {letter.error}")

    return ConsumerPolicy(
        model=RetrievalRequested,
        group="g",
        handler=handle,
        kafka=KafkaSettings(commit_every=commit_every, commit_interval_s=3600),
        processed=store,
        dead_letter=dead_letter,
    )


async def stop_timers(p: ConsumerPolicy[Any]) -> None:
    for committer in p.committers.values():
        if committer.timer is not None:
            committer.timer.cancel()
            await asyncio.gather(committer.timer, return_exceptions=True)


EVENTS = [RetrievalRequested(tenant_id="acme", query=f"q{i}") for i in range(10)]


@pytest.mark.parametrize("commit_every", [1, 3, 1000], ids=["each", "every-3", "at-shutdown"])
async def test_a_process_dying_mid_batch_commits_only_handled_records_and_its_successor_finishes_once(
    tmp_path: Path, commit_every: int
) -> None:
    path = tmp_path / "g.sqlite"
    batch = records_of(EVENTS)
    first_run: list[str] = []
    consumer = Consumer()
    first = policy(ProcessedEvents(path), first_run, die_on="q6", commit_every=commit_every)
    with pytest.raises(ProcessDied):
        await first.handle_records(batch, consumer)
    await stop_timers(first)
    # The process is gone: whatever was not flushed and committed is lost with it.
    assert first_run == [f"q{i}" for i in range(6)]
    died_at = consumer.committed
    assert died_at <= 6, "an offset past the record that never finished was committed"
    assert died_at == 6 // commit_every * commit_every

    # The successor reads the same processed ids and gets everything after the committed offset.
    second_run: list[str] = []
    store = ProcessedEvents(path)
    durable = store.seen_keys([str(e.event_id) for e in EVENTS])
    assert durable == {str(e.event_id) for e in EVENTS[:died_at]}, "ids flushed = ids committed"
    second = policy(store, second_run, die_on=None, commit_every=commit_every)
    await second.handle_records(batch[died_at:], consumer)
    await second.flush()
    assert second_run == [f"q{i}" for i in range(died_at, 10)]
    assert consumer.committed == 10
    # Every record handled; none whose handling was committed handled again.
    assert set(first_run) | set(second_run) == {e.query for e in EVENTS}
    assert set(first_run[:died_at]).isdisjoint(second_run)


async def test_a_redelivered_batch_skips_the_records_whose_ids_were_flushed(tmp_path: Path) -> None:
    """The ids are flushed just before the commit: a crash between the two redelivers records
    that are already marked, and the batch's one lookup finds them."""
    path = tmp_path / "g.sqlite"
    store = ProcessedEvents(path)
    for event in EVENTS[:4]:
        store.mark(event.event_id)
    store.flush()  # ... and the process died before committing their offsets
    store.close()

    handled: list[str] = []
    consumer = Consumer()
    successor = policy(ProcessedEvents(path), handled, die_on=None, commit_every=1)
    await successor.handle_records(records_of(EVENTS), consumer)
    assert handled == [f"q{i}" for i in range(4, 10)]
    assert consumer.committed == 10  # the skipped ones are committed too: they were handled


async def test_the_same_event_twice_in_one_batch_is_handled_once(tmp_path: Path) -> None:
    handled: list[str] = []
    again = EVENTS[1]
    batch = records_of([EVENTS[0], again, EVENTS[2], again])
    await policy(ProcessedEvents(tmp_path / "g.sqlite"), handled, die_on=None, commit_every=1).handle_records(
        batch, Consumer()
    )
    assert handled == ["q0", "q1", "q2"]


async def test_stopping_mid_batch_leaves_the_rest_unhandled_and_uncommitted(tmp_path: Path) -> None:
    handled: list[str] = []
    consumer = Consumer()
    p = policy(ProcessedEvents(tmp_path / "g.sqlite"), handled, die_on=None, commit_every=1)
    await p.handle_records(records_of(EVENTS), consumer, stopping=lambda: len(handled) >= 3)
    assert handled == ["q0", "q1", "q2"]
    assert consumer.committed == 3


def test_the_batch_lookup_answers_like_one_lookup_per_id(tmp_path: Path) -> None:
    store = ProcessedEvents(tmp_path / "g.sqlite")
    flushed, pending, unseen = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    store.mark(flushed)
    store.flush()
    store.mark(pending)
    many = [str(uuid.uuid4()) for _ in range(2000)]  # past SQLite's limit on bound parameters
    keys = [str(flushed), str(pending), str(unseen), *many]
    assert store.seen_keys(keys) == {str(flushed), str(pending)}
    assert [store.seen(k) for k in (flushed, pending, unseen)] == [True, True, False]
