"""The consumer policy every service runs under (DESIGN.md §3).

A subscriber receives records in batches (one `getmany`); for each record, in partition order:

1. decode and check it (`codec.decode`); poison goes to the `dlq` topic with the original bytes,
   topic/partition/offset, consumer group and the reason, and the consumer moves on;
2. skip it if this consumer group already handled its `event_id` (`ProcessedEvents`);
3. run the typed handler, retrying a failing one `handler_attempts` times with doubling back-off,
   then dead-letter it — nothing is dropped and nothing loops forever;
4. remember the `event_id`; the ids and then the offsets are committed a few at a time, after
   handling (`OffsetCommitter`).

Batches amortise the per-message work; handlers still see one event at a time. What a batch
shares: one decode pass before the first handler runs, one processed-id lookup for the whole
batch (step 2), the metric series, and the commits. What it does not: a record counts as
handled, and may be committed, only once its own handler has returned.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Generic, TypeVar

# aiokafka's own (a NamedTuple): FastStream's TopicPartition has no equality, so it never matched
# the consumer's assignment and no offset was ever committed.
from aiokafka import TopicPartition
from opentelemetry import context
from opentelemetry.trace import Span, Status, StatusCode

from loraswarm.shared import tracing
from loraswarm.shared.codec import Poison, PoisonKind, decode
from loraswarm.shared.envelope import Envelope, utc_now
from loraswarm.shared.events import DeadLetter
from loraswarm.shared.metrics import DEAD_LETTERS, EVENT_HANDLING, EVENTS_CONSUMED
from loraswarm.shared.processed import ProcessedEvents
from loraswarm.shared.settings import KafkaSettings
from loraswarm.shared.tracing import parent_context, process_span

log = logging.getLogger("loraswarm.consumer")

E = TypeVar("E", bound=Envelope)
DeadLetterSink = Callable[[DeadLetter, bytes | None], Awaitable[None]]
ErrorKind = PoisonKind | str


@dataclass
class OffsetCommitter:
    """Commits the handled offsets of one consumer, a few at a time, never ahead of handling.

    A synchronous commit per message would cap a partition at a few hundred events/s. So the
    processed ids and then the offsets are flushed together every `every` messages, or once
    `interval_s` has passed since the first uncommitted one (a timer covers a consumer that
    goes idle). A crash redelivers at most that uncommitted tail; its handlers run again and
    emit the same derived event ids, which the consumers downstream skip.
    """

    consumer: Any
    before_commit: Callable[[], None]
    every: int
    interval_s: float
    pending: dict[TopicPartition, int] = field(default_factory=dict)
    count: int = 0
    timer: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    partitions: dict[tuple[str, int], TopicPartition] = field(default_factory=dict)

    async def handled(self, topic: str, partition: int, offset: int) -> None:
        if self.note(topic, partition, offset):
            await self.flush()

    def note(self, topic: str, partition: int, offset: int) -> bool:
        """`offset` of `partition` is handled; True when a flush is due now (the caller awaits
        `flush`). Per record, where awaiting `handled` would cost a coroutine each."""
        tp = self.partitions.get((topic, partition))
        if tp is None:
            tp = self.partitions[topic, partition] = TopicPartition(topic, partition)
        self.pending[tp] = offset + 1
        self.count += 1
        if self.count >= self.every:
            return True
        if self.timer is None or self.timer.done():
            self.timer = asyncio.create_task(self._flush_later())
        return False

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.interval_s)
        try:
            await self.flush()
        except Exception:  # the next message or the next timer tries again
            log.exception("offset commit failed; will retry")

    async def flush(self) -> None:
        async with self.lock:
            if not self.pending:
                return
            offsets, self.pending, self.count = self.pending, {}, 0
            self.before_commit()
            # Partitions revoked in a rebalance can no longer be committed by this member; the
            # new owner redelivers them and the idempotent handlers absorb it.
            assigned = self.consumer.assignment()
            owned = {tp: off for tp, off in offsets.items() if tp in assigned}
            if owned:
                await self.consumer.commit(owned)


def _is_kafka_consumer(consumer: Any) -> bool:
    # The in-process broker hands records over without a Kafka consumer: nothing to commit.
    return consumer is not None and hasattr(consumer, "assignment") and hasattr(consumer, "commit")


@dataclass
class ConsumerPolicy(Generic[E]):
    """Runs one typed handler of one consumer group under the policy above."""

    model: type[E]
    group: str
    handler: Callable[[E], Awaitable[Any]]
    kafka: KafkaSettings
    processed: ProcessedEvents
    dead_letter: DeadLetterSink
    committers: dict[int, OffsetCommitter] = field(default_factory=dict)
    dead_letters: int = 0
    _consumed: dict[str, Any] = field(init=False, repr=False)
    _handling: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # A metric's `labels(...)` lookup costs more than the increment: once per policy.
        kind = self.model.event_type
        self._consumed = {
            outcome: EVENTS_CONSUMED.labels(self.group, kind, outcome)
            for outcome in ("handled", "duplicate", "dead_lettered")
        }
        self._handling = EVENT_HANDLING.labels(self.group, kind)

    async def handle_records(
        self, records: Sequence[Any], consumer: Any, *, stopping: Callable[[], bool] = lambda: False
    ) -> None:
        """Handle `records` (this policy's topic, partition order) one after another, each
        committed (a few at a time) once its handler has returned. Once `stopping()`, the rest
        is left unhandled and uncommitted: the partition's next owner gets it."""
        decoded = [self._decode(record) for record in records]
        keys = [None if isinstance(event, Poison) else str(event.event_id) for event in decoded]
        seen = self.processed.seen_keys([key for key in keys if key is not None])
        committer = self._committer(consumer) if _is_kafka_consumer(consumer) else None
        handled = 0  # counted once per batch: the counter takes a lock per increment
        try:
            for record, event, key in zip(records, decoded, keys, strict=True):
                if stopping():
                    return
                handled += await self._handle(record, event, key, seen)
                if committer is not None and committer.note(record.topic, record.partition, record.offset):
                    await committer.flush()
        finally:
            if handled:
                self._consumed["handled"].inc(handled)

    async def handled(self, consumer: Any, topic: str, partition: int, offset: int) -> None:
        """Records of `partition` up to `offset` are handled: commit them (a few at a time)."""
        if _is_kafka_consumer(consumer):
            await self._committer(consumer).handled(topic, partition, offset)

    async def handle_record(self, record: Any) -> None:
        """Handle one record (the lanes run each record in a task of its own)."""
        event = self._decode(record)
        key = None if isinstance(event, Poison) else str(event.event_id)
        if await self._handle(record, event, key, set() if key is None else self.processed.seen_keys([key])):
            self._consumed["handled"].inc()

    def _decode(self, record: Any) -> Envelope | Poison:
        return decode(
            record.value,
            record.key,
            expected_type=self.model.event_type,
            max_bytes=self.kafka.max_message_bytes,
        )

    async def _handle(self, record: Any, decoded: Envelope | Poison, key: str | None, seen: set[str]) -> bool:
        """Steps 1-4 for one decoded record (`key`: its event id as a string); `seen`: the
        handled ids as of its batch's lookup, to which this adds its own (a second copy later
        in the same batch is then skipped). True when its handler ran and returned (the caller
        counts it as handled)."""
        if tracing.recording():
            with process_span(record, self.group, None) as span:
                return await self._step(record, decoded, key, seen, span)
        # No span to record: the handler runs in the producer's context, which what it sends
        # carries on (without process_span's generator, about 1 µs a record).
        token = context.attach(parent_context(record.headers))
        try:
            return await self._step(record, decoded, key, seen, None)
        finally:
            context.detach(token)

    async def _step(
        self, record: Any, decoded: Envelope | Poison, key: str | None, seen: set[str], span: Span | None
    ) -> bool:
        if isinstance(decoded, Poison):
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, decoded.reason))
                span.set_attribute("error.type", decoded.kind)
            await self._dead_letter(record, decoded.kind, decoded.reason, attempts=1)
            return False
        assert key is not None  # a decoded event's id
        if span is not None:
            span.set_attribute("messaging.message.id", key)
            span.set_attribute("loraswarm.tenant_id", decoded.tenant_id)
            span.set_attribute("loraswarm.request_id", str(decoded.request_id))
        if key in seen:
            if span is not None:
                span.set_attribute("loraswarm.duplicate", True)
            self._consumed["duplicate"].inc()
            log.info("skipping %s %s: already handled by %s", decoded.type, key, self.group)
            return False
        started = perf_counter()  # prometheus's `time()` block costs a Timer object per event
        try:
            try:  # the first attempt inline: most handlers succeed at once
                await self.handler(decoded)  # type: ignore[arg-type]
                handled = True
            except Exception as exc:
                handled = await self._retry(decoded, record, exc)  # type: ignore[arg-type]
        finally:
            self._handling.observe(perf_counter() - started)
        self.processed.mark_key(key)
        seen.add(key)
        return handled

    async def _retry(self, event: E, record: Any, error: Exception) -> bool:
        """The handler's first attempt failed with `error`: retry with doubling back-off; False
        if the event ended in the dead-letter topic."""
        attempts = self.kafka.handler_attempts
        delay = self.kafka.retry_backoff_s
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                try:
                    await self.handler(event)
                    return True
                except Exception as exc:
                    error = exc
            if attempt == attempts:
                log.error(
                    "%s failed %d times on %s %s",
                    self.group,
                    attempts,
                    event.type,
                    event.event_id,
                    exc_info=error,
                )
                reason = f"{type(error).__name__}: {error}"
                await self._dead_letter(record, "handler_error", reason, attempts=attempts)
                return False
            log.warning("%s attempt %d on %s failed: %s; retrying", self.group, attempt, event.type, error)
            await asyncio.sleep(delay)
            delay *= 2
        return False

    def _committer(self, consumer: Any) -> OffsetCommitter:
        key = id(consumer)
        if key not in self.committers:
            self.committers[key] = OffsetCommitter(
                consumer, self.processed.flush, self.kafka.commit_every, self.kafka.commit_interval_s
            )
        return self.committers[key]

    async def flush(self) -> None:
        """Commit what was handled (on shutdown)."""
        for committer in self.committers.values():
            await committer.flush()
        self.processed.flush()

    async def _dead_letter(self, record: Any, kind: ErrorKind, reason: str, *, attempts: int) -> None:
        letter = dead_letter_of(record, self.group, kind, reason, attempts=attempts)
        log.warning(
            "dead-lettered %s[%s]@%s for %s: %s",
            record.topic,
            record.partition,
            record.offset,
            self.group,
            reason,
        )
        self.dead_letters += 1
        DEAD_LETTERS.labels(self.group, self.model.event_type, kind).inc()
        self._consumed["dead_lettered"].inc()
        await self.dead_letter(letter, record.key)


def dead_letter_of(
    record: Any, group: str | None, kind: ErrorKind, reason: str, *, attempts: int
) -> DeadLetter:
    headers = {
        k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
        for k, v in (record.headers or ())
    }
    return DeadLetter(
        original_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key_b64=None if record.key is None else base64.b64encode(record.key).decode(),
        value_b64=base64.b64encode(record.value or b"").decode(),
        headers=headers,
        consumer_group=group,
        error_type=kind,  # type: ignore[arg-type]
        error=reason,
        attempts=attempts,
        failed_at=utc_now(),
    )
