"""The one object a service talks to: `EventBus`.

`EventBus(settings, service=...)` builds a FastStream `KafkaBroker` that runs every subscriber
under the consumer policy (`consumer.ConsumerPolicy`). With `broker = "kafka"` it talks to the
cluster in `settings.kafka`; with `broker = "memory"` the very same broker and handlers run
in-process on FastStream's in-memory Kafka (the embedded default), with the same decoding,
dead-lettering and idempotency.

FastStream receives (and documents) the subscribers; records go out through a `RecordSender`,
one per broker kind, which skips FastStream's per-message publishing machinery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from itertools import chain, groupby
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faststream import AckPolicy
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.message import StreamMessage

from loraswarm.shared import tracing
from loraswarm.shared.codec import encode
from loraswarm.shared.consumer import ConsumerPolicy
from loraswarm.shared.envelope import Envelope
from loraswarm.shared.events import DeadLetter
from loraswarm.shared.in_process_kafka import IN_PROCESS, InProcessSender
from loraswarm.shared.kafka_client import KafkaSender, ensure_topics, make_broker
from loraswarm.shared.lanes import LaneKey, Lanes
from loraswarm.shared.metrics import EVENTS_PUBLISHED
from loraswarm.shared.processed import ProcessedRegistry
from loraswarm.shared.settings import Settings
from loraswarm.shared.topics import DLQ, prefixed, topic_of

log = logging.getLogger("loraswarm.bus")

E = TypeVar("E", bound=Envelope)
Handler = Callable[[E], Awaitable[Any]]

# How long one poll of an idle consumer waits for a record; one arriving ends the wait at once.
POLL_TIMEOUT_MS = 100


class RecordSender(Protocol):
    """Where the bus's records go: Kafka (`kafka_client.KafkaSender`) or the in-process broker."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def send(
        self, topic: str, value: bytes, key: bytes | None, headers: dict[str, str]
    ) -> Awaitable[object]:
        """Queue one record; the result is awaited for the broker's acknowledgement."""
        ...


RecordsHandler = Callable[[Sequence[Any], Any], Awaitable[None]]
"""What the bus does with one polled batch: its records, and the aiokafka consumer they came from."""


def direct_subscriber(on_records: RecordsHandler) -> type[BatchSubscriber]:
    """FastStream's batch subscriber, polling the same way but handing each batch straight to
    `on_records`, for Kafka (the in-process broker delivers through FastStream's own path).

    Two costs of FastStream's go: after an empty poll it slept as long as the poll had already
    waited (`getmany(timeout_ms=...)` returns as soon as a record arrives), so an event reaching
    an idle consumer waited up to that much more on every hop; and each batch went through its
    middleware, parser, decoder and dependency injection, about as long again as the policy's
    handling of a one-record batch. What the policy needs it gets: the raw records, the
    consumer to commit on, and the subscriber's lock, which FastStream's stop waits for.
    """

    class DirectBatchSubscriber(BatchSubscriber):
        __slots__ = ()

        async def get_msg(self, consumer: AIOKafkaConsumer) -> tuple[Any, ...]:
            batch = await consumer.getmany(timeout_ms=self.batch_timeout_ms, max_records=self.max_records)
            return tuple(chain.from_iterable(batch.values()))

        async def consume_one(self, msg: tuple[Any, ...]) -> None:
            if not self.running:
                return
            with self.lock:
                try:
                    await on_records(msg, self.consumer)
                except Exception:  # the policy handles handler errors; the poll loop must go on
                    log.exception("handling a batch of %d records failed", len(msg))

    return DirectBatchSubscriber


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failed acknowledgement's exception as seen (one failure already raised)."""
    if not future.cancelled():
        future.exception()


async def records_only(message: StreamMessage[Any]) -> None:
    """The subscriber's decoder: the policy decodes the raw records itself, so FastStream's own
    JSON decoding of every record of a batch would only be thrown away."""
    return None


class EventBus:
    """Consume and publish loraswarm events on Kafka or in-process, under the consumer policy."""

    def __init__(self, settings: Settings, *, service: str) -> None:
        self.settings = settings
        self.service = service
        in_memory = settings.broker == "memory"
        self.processed = ProcessedRegistry(None if in_memory else settings.data_dir)
        self.policies: list[ConsumerPolicy[Any]] = []
        self._lanes: list[Lanes] = []
        self.broker = (
            IN_PROCESS.broker(settings)
            if in_memory
            else make_broker(settings, service=service, consumer_only=True)
        )
        self.sender: RecordSender = (
            InProcessSender(settings)
            if in_memory
            else KafkaSender(settings.kafka, client_id=f"{settings.kafka.client_id}-{service}")
        )
        self._published: dict[str, Any] = {}  # event type -> its EVENTS_PUBLISHED series
        self._topics: dict[str, str] = {}  # event type -> its prefixed topic
        self._stack: AsyncExitStack | None = None
        self._on_stop: list[Callable[[], Awaitable[object]]] = []
        # Shutdown: once stopping, fetched records are left unhandled (and uncommitted); the
        # handlers already running are waited for (`_running` counts the one-at-a-time ones).
        self._stopping = False
        self._running: dict[asyncio.Task[Any], int] = {}  # task -> handlers it runs now
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ wiring

    def on_stop(self, close: Callable[[], Awaitable[object]]) -> None:
        """Close something the handlers use (an HTTP client) when the bus stops, once the last
        handler has finished; last registered, first closed."""
        self._on_stop.append(close)

    def topic(self, name: str) -> str:
        return prefixed(name, self.settings.kafka.topic_prefix)

    def consumer(
        self, model: type[E], *, group: str, concurrency: int = 1, lane: LaneKey | None = None
    ) -> Callable[[Handler[E]], Handler[E]]:
        """Register a handler of `model` events for consumer group `group`, under the policy."""

        def register(handler: Handler[E]) -> Handler[E]:
            self.consumers(
                group, {model: handler}, description=handler.__doc__, concurrency=concurrency, lane=lane
            )
            return handler

        return register

    def consumers(
        self,
        group: str,
        handlers: Mapping[type[Any], Handler[Any]],
        *,
        description: str | None = None,
        concurrency: int = 1,
        lane: LaneKey | None = None,
    ) -> None:
        """Register handlers of several event types as ONE Kafka consumer of their topics.

        The topics are keyed by tenant and have the same number of partitions, so one member of
        the group receives the same partitions of every topic: all events of a tenant reach the
        same instance, which can then keep per-request state without racing another instance.

        `concurrency` > 1 handles up to that many records at once, ordered within each `lane`
        and committed only over finished records (shared/lanes.py); 1 is Kafka's one at a time.
        """
        by_topic: dict[str, ConsumerPolicy[Any]] = {}
        for model, handler in handlers.items():
            policy = ConsumerPolicy(
                model=model,
                group=group,
                handler=handler,
                kafka=self.settings.kafka,
                processed=self.processed.for_group(group),
                dead_letter=self._publish_dead_letter,
            )
            self.policies.append(policy)
            by_topic[self.topic(topic_of(model))] = policy

        lanes = Lanes(concurrency, lane) if concurrency > 1 else None
        if lanes is not None:
            self._lanes.append(lanes)

        async def on_records(records: Sequence[Any], consumer: Any) -> None:
            async def done(record: Any, end: int) -> None:
                await by_topic[record.topic].handled(consumer, record.topic, record.partition, end)

            if lanes is None:
                # A batch arrives partition by partition: each run of one topic's records goes to
                # its policy whole, which then looks up their processed ids once.
                for topic, run in groupby(records, key=lambda record: record.topic):
                    if self._stopping:
                        return  # not handled, not committed: the next owner gets it
                    await self._one_at_a_time(by_topic[topic], list(run), consumer)
                return
            for record in records:
                if self._stopping:
                    return
                await lanes.submit(record, by_topic[record.topic].handle_record, done)

        async def on_message(message: KafkaMessage) -> None:  # the in-process broker's path
            raw = message.raw_message
            await on_records(
                raw if isinstance(raw, (list, tuple)) else [raw], getattr(message, "consumer", None)
            )

        names = [topic_of(m) for m in handlers]
        subscriber = self.broker.subscriber(
            *by_topic,
            group_id=self.settings.kafka.group(group),
            batch=True,
            max_records=500,
            batch_timeout_ms=POLL_TIMEOUT_MS,
            decoder=records_only,
            ack_policy=AckPolicy.MANUAL,  # the policy commits, after handling
            auto_offset_reset="earliest",
            # Range, not aiokafka's default round-robin: partition p of every topic goes to the
            # same member, which is what keeps a tenant's events together.
            partition_assignment_strategy=(RangePartitionAssignor,),
            title=f"{group}:{','.join(names)}",
            description=description or f"{group} handles {', '.join(names)}",
        )
        subscriber(on_message)
        if self.settings.broker == "kafka" and type(subscriber) is BatchSubscriber:
            subscriber.__class__ = direct_subscriber(on_records)

    async def _one_at_a_time(self, policy: ConsumerPolicy[Any], records: list[Any], consumer: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._running[task] = self._running.get(task, 0) + 1
        self._idle.clear()
        try:
            await policy.handle_records(records, consumer, stopping=lambda: self._stopping)
        finally:
            self._running[task] -= 1
            if not self._running[task]:
                del self._running[task]
            if not self._running:
                self._idle.set()

    # ------------------------------------------------------------------ publishing

    async def publish(self, event: Envelope) -> None:
        """Publish one event keyed by its tenant and wait for the broker's acknowledgement."""
        await (await self._queue(event))
        self._count(event.type)

    async def publish_many(self, events: Sequence[Envelope]) -> None:
        """Publish several events, each confirmed, with one wait for them all.

        Sending first and waiting after lets the producer fill whole batches instead of one
        round trip per event.
        """
        acknowledgements = [await self._queue(event) for event in events]
        # One after another, not gather's callback per acknowledgement (3 µs each here): they
        # arrive a produced batch at a time, so most are already done when their turn comes.
        for index, acknowledged in enumerate(acknowledgements):
            try:
                await acknowledged
            except BaseException:
                for rest in acknowledgements[index + 1 :]:  # as gather does: failures already seen
                    if isinstance(rest, asyncio.Future):
                        rest.add_done_callback(_retrieve)
                raise
        for event_type, count in Counter(event.type for event in events).items():
            self._count(event_type, count)

    async def _queue(self, event: Envelope) -> Awaitable[object]:
        topic = self._topics.get(event.type)
        if topic is None:
            topic = self._topics[event.type] = self.topic(topic_of(event))
        if not tracing.recording():  # no span to make: the record carries the current context
            record = encode(event)
            return await self.sender.send(topic, record.value, record.key, record.headers)
        with tracing.send_span(topic, event.tenant_id.encode(), event.event_id):
            record = encode(event)
            return await self.sender.send(topic, record.value, record.key, record.headers)

    def _count(self, event_type: str, count: int = 1) -> None:
        series = self._published.get(event_type)
        if series is None:
            series = self._published[event_type] = EVENTS_PUBLISHED.labels(self.service, event_type)
        series.inc(count)

    async def publish_raw(
        self, topic: str, value: bytes, *, key: bytes | None, headers: dict[str, str] | None = None
    ) -> None:
        """Publish bytes as they are (the CLI's `publish` after validation, tests' poison)."""
        await self._send(value, self.topic(topic), key, headers or {})

    async def _publish_dead_letter(self, letter: DeadLetter, key: bytes | None) -> None:
        await self._send(
            letter.model_dump_json().encode(),
            self.topic(DLQ),
            key,
            {"content-type": "application/json", "event-type": DLQ},
        )

    async def _send(self, value: bytes, topic: str, key: bytes | None, headers: dict[str, str]) -> None:
        await (await self.sender.send(topic, value, key, headers))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._stack = AsyncExitStack()
        self._stopping = False
        if self.settings.broker == "memory":
            await IN_PROCESS.join(self.settings)
            self._stack.push_async_callback(IN_PROCESS.leave, self.settings)
            self._stack.push_async_callback(self._finish_handlers)  # runs first (LIFO)
            return
        await ensure_topics(self.settings.kafka)
        await self.sender.start()
        self._stack.push_async_callback(self.sender.stop)  # after the broker (LIFO): dead letters
        await self.broker.start()
        self._stack.push_async_callback(self.broker.stop)
        # Runs before the broker stops (LIFO): what was handled gets committed.
        self._stack.push_async_callback(self._flush)

    async def _flush(self) -> None:
        await self._finish_handlers()  # then commit the finished prefix of each partition
        for policy in self.policies:
            await policy.flush()

    def handler_grace_s(self) -> float:
        """How long stopping waits for running handlers: the grace, less a moment to commit and
        close within it."""
        grace = self.settings.shutdown_grace_s
        return max(grace * 0.5, grace - 2.0)

    async def _finish_handlers(self) -> None:
        """Stop handling, and give the running handlers the grace to finish (same on both brokers)."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        until = loop.time() + self.handler_grace_s()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=self.handler_grace_s())
        # Past the grace a handler is stopped: its record stays uncommitted and comes again. (In
        # process, the task is the broker's delivery worker, shared by every bus: it stops when
        # the last bus leaves.)
        stuck = list(self._running) if self.settings.broker == "kafka" else []
        for task in stuck:
            task.cancel()
        if stuck:
            await asyncio.wait(stuck, timeout=1.0)
        for lanes in self._lanes:
            await lanes.close(max(0.0, until - loop.time()))

    async def stop(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
            for close in reversed(self._on_stop):
                await close()
        self.processed.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
