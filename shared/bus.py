"""The broker factory and the one object a service talks to: `EventBus`.

`EventBus(settings, service=...)` builds a FastStream `KafkaBroker` that runs every subscriber
under the consumer policy (`consumer.EventPolicy`). With `broker = "kafka"` it talks to the
cluster in `settings.kafka`; with `broker = "memory"` the very same broker and handlers run
in-process on FastStream's in-memory Kafka (the embedded default), with the same decoding,
dead-lettering and idempotency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, TypeVar

from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.partitioner import DefaultPartitioner
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from loraswarm.shared.codec import encode
from loraswarm.shared.consumer import ConsumerPolicy
from loraswarm.shared.envelope import Envelope
from loraswarm.shared.events import DeadLetter
from loraswarm.shared.lanes import LaneKey, Lanes
from loraswarm.shared.metrics import EVENTS_PUBLISHED
from loraswarm.shared.processed import ProcessedRegistry
from loraswarm.shared.settings import KafkaSettings, Settings
from loraswarm.shared.topics import ALL_TOPICS, DLQ, prefixed, topic_of
from loraswarm.shared.tracing import send_span

log = logging.getLogger("loraswarm.bus")

E = TypeVar("E", bound=Envelope)
Handler = Callable[[E], Awaitable[Any]]

# Large enough for a dead letter that carries a message at the consumer's size limit, base64'd.
_MAX_REQUEST_BYTES = 16 * 1024 * 1024


def kafka_security(kafka: KafkaSettings) -> BaseSecurity | None:
    """FastStream security settings from ours (SASL and/or TLS)."""
    use_ssl = kafka.security_protocol in ("SSL", "SASL_SSL")
    context: ssl.SSLContext | None = None
    if use_ssl:
        context = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
        if kafka.ssl_certfile:
            context.load_cert_chain(
                str(kafka.ssl_certfile), str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None
            )
    if kafka.security_protocol.startswith("SASL"):
        if not (kafka.sasl_username and kafka.sasl_password and kafka.sasl_mechanism):
            raise ValueError(
                "SASL needs LORASWARM_KAFKA__SASL_MECHANISM, __SASL_USERNAME and __SASL_PASSWORD"
            )
        cls = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}[
            kafka.sasl_mechanism
        ]
        return cls(  # type: ignore[no-any-return]
            kafka.sasl_username,
            kafka.sasl_password.get_secret_value(),
            use_ssl=use_ssl,
            ssl_context=context,
        )
    if use_ssl:
        return BaseSecurity(ssl_context=context, use_ssl=True)  # type: ignore[no-any-return]
    return None


def make_broker(settings: Settings, *, service: str) -> KafkaBroker:
    """A FastStream Kafka broker for `service`, configured from `settings.kafka`."""
    kafka = settings.kafka
    return KafkaBroker(
        kafka.bootstrap_servers.split(","),
        client_id=f"{kafka.client_id}-{service}",
        security=kafka_security(kafka),
        acks="all",
        max_request_size=_MAX_REQUEST_BYTES,
        # Batches fill up while a request is in flight; a lone event does not wait.
        max_batch_size=256 * 1024,
        logger=None,
    )


class _InProcessKafka:
    """The embedded default's broker: one in-memory Kafka per topic prefix, for the whole process.

    Every EventBus of a process (the gateway, the planner, the specialists ... of `serve all`)
    shares it, so an event one service publishes reaches the others' handlers. It is FastStream's
    in-memory Kafka (`TestKafkaBroker`), entered when the first bus starts and left when the last
    one stops; a bus that starts later has its new subscribers started too.
    """

    def __init__(self) -> None:
        self._brokers: dict[str, KafkaBroker] = {}
        self._users: dict[str, int] = {}
        self._contexts: dict[str, TestKafkaBroker] = {}
        # Like Kafka, a publish returns at once and delivery happens elsewhere: one queue and one
        # worker per (topic, partition), the partition chosen from the key as Kafka does, so a
        # tenant's events keep their order while tenants and topics proceed side by side.
        self._queues: dict[
            tuple[str, str, int], asyncio.Queue[tuple[bytes, bytes | None, dict[str, str]]]
        ] = {}
        self._workers: dict[tuple[str, str, int], asyncio.Task[None]] = {}
        self._partitioner = DefaultPartitioner()

    def enqueue(
        self, settings: Settings, topic: str, value: bytes, key: bytes | None, headers: dict[str, str]
    ) -> None:
        prefix = settings.kafka.topic_prefix
        if prefix not in self._contexts:
            raise RuntimeError("the in-process broker is not running: start an EventBus first")
        partitions = list(range(settings.kafka.partitions))
        partition = 0 if key is None else int(self._partitioner(key, partitions, partitions))
        slot = (prefix, topic, partition)
        if slot not in self._queues:
            self._queues[slot] = asyncio.Queue()
            self._workers[slot] = asyncio.create_task(self._deliver(prefix, topic, self._queues[slot]))
        self._queues[slot].put_nowait((value, key, headers))

    async def _deliver(
        self, prefix: str, topic: str, queue: asyncio.Queue[tuple[bytes, bytes | None, dict[str, str]]]
    ) -> None:
        while True:
            value, key, headers = await queue.get()
            try:
                await self._brokers[prefix].publish(value, topic=topic, key=key, headers=headers)
            except Exception:  # the consumer policy handles handler errors; this is a last resort
                log.exception("in-process delivery to %s failed", topic)
            finally:
                queue.task_done()

    async def drain(self, settings: Settings) -> None:
        """Wait until every queued event of this prefix was delivered (tests, shutdown)."""
        prefix = settings.kafka.topic_prefix
        while True:
            queues = [q for (p, _, _), q in self._queues.items() if p == prefix and _unfinished(q)]
            if not queues:
                return
            await asyncio.gather(*(q.join() for q in queues))

    def broker(self, settings: Settings) -> KafkaBroker:
        key = settings.kafka.topic_prefix
        if key not in self._brokers:
            self._brokers[key] = make_broker(settings, service="embedded")
        return self._brokers[key]

    async def join(self, settings: Settings) -> None:
        key = settings.kafka.topic_prefix
        broker = self.broker(settings)
        self._users[key] = self._users.get(key, 0) + 1
        if key not in self._contexts:
            context = TestKafkaBroker(broker)
            await context.__aenter__()
            self._contexts[key] = context
        else:
            await broker.start()  # patched while in memory: starts the subscribers added since

    async def leave(self, settings: Settings) -> None:
        key = settings.kafka.topic_prefix
        self._users[key] -= 1
        if self._users[key] == 0:
            del self._users[key]
            for slot in [slot for slot in self._workers if slot[0] == key]:
                self._workers.pop(slot).cancel()
                self._queues.pop(slot)
            context = self._contexts.pop(key)
            self._brokers.pop(key, None)
            await context.__aexit__(None, None, None)


def _unfinished(queue: asyncio.Queue[Any]) -> bool:
    # asyncio.Queue counts puts not yet marked done, but exposes the count only privately.
    return bool(getattr(queue, "_unfinished_tasks", 0))


_IN_PROCESS = _InProcessKafka()


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
            _IN_PROCESS.broker(settings)
            if settings.broker == "memory"
            else make_broker(settings, service=service)
        )
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

        async def on_records(message: KafkaMessage) -> None:
            raw = message.raw_message
            consumer = getattr(message, "consumer", None)

            async def done(record: Any, end: int) -> None:
                await by_topic[record.topic].handled(consumer, record.topic, record.partition, end)

            for record in raw if isinstance(raw, (list, tuple)) else [raw]:
                if self._stopping:
                    return  # not handled, not committed: the next owner gets it
                policy = by_topic[record.topic]
                if lanes is None:
                    await self._one_at_a_time(policy, record, consumer)
                else:
                    await lanes.submit(record, policy.handle_record, done)

        names = [topic_of(m) for m in handlers]
        self.broker.subscriber(
            *by_topic,
            group_id=group,
            batch=True,
            max_records=500,
            # FastStream sleeps this long again after an empty poll: short, or every idle hop waits.
            batch_timeout_ms=10,
            ack_policy=AckPolicy.MANUAL,  # the policy commits, after handling
            auto_offset_reset="earliest",
            # Range, not aiokafka's default round-robin: partition p of every topic goes to the
            # same member, which is what keeps a tenant's events together.
            partition_assignment_strategy=(RangePartitionAssignor,),
            title=f"{group}:{','.join(names)}",
            description=description or f"{group} handles {', '.join(names)}",
        )(on_records)

    async def _one_at_a_time(self, policy: ConsumerPolicy[Any], record: Any, consumer: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._running[task] = self._running.get(task, 0) + 1
        self._idle.clear()
        try:
            await policy.handle_records([record], consumer)
        finally:
            self._running[task] -= 1
            if not self._running[task]:
                del self._running[task]
            if not self._running:
                self._idle.set()

    # ------------------------------------------------------------------ publishing

    async def publish(self, event: Envelope) -> None:
        """Publish one event keyed by its tenant and wait for the broker's acknowledgement."""
        topic = self.topic(topic_of(event))
        with send_span(topic, event.tenant_id.encode(), str(event.event_id)):
            record = encode(event)
            await self._send(record.value, topic, record.key, record.headers)
        EVENTS_PUBLISHED.labels(self.service, event.type).inc()

    async def publish_many(self, events: Sequence[Envelope]) -> None:
        """Publish several events, each confirmed, with one wait for them all.

        Sending first and waiting after lets the producer fill whole batches instead of one
        round trip per event.
        """
        if self.settings.broker == "memory":
            for event in events:
                await self.publish(event)
            return
        futures = []
        for event in events:
            topic = self.topic(topic_of(event))
            with send_span(topic, event.tenant_id.encode(), str(event.event_id)):
                record = encode(event)
                futures.append(
                    await self.broker.publish(
                        record.value, topic=topic, key=record.key, headers=record.headers, no_confirm=True
                    )
                )
        if futures and self.settings.broker == "kafka":
            await asyncio.gather(*futures)
        for event in events:
            EVENTS_PUBLISHED.labels(self.service, event.type).inc()

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
        if self.settings.broker == "memory":
            _IN_PROCESS.enqueue(self.settings, topic, value, key, headers)
        else:
            await self.broker.publish(value, topic=topic, key=key, headers=headers)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._stack = AsyncExitStack()
        self._stopping = False
        if self.settings.broker == "memory":
            await _IN_PROCESS.join(self.settings)
            self._stack.push_async_callback(_IN_PROCESS.leave, self.settings)
            self._stack.push_async_callback(self._finish_handlers)  # runs first (LIFO)
            return
        await ensure_topics(self.settings.kafka)
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


async def ensure_topics(
    kafka: KafkaSettings, topics: tuple[str, ...] = ALL_TOPICS, *, config: dict[str, str] | None = None
) -> None:
    """Create the project's topics that do not exist yet, with the configured layout."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    params = _aiokafka_security(kafka)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap_servers, client_id=f"{kafka.client_id}-admin", **params
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [prefixed(t, kafka.topic_prefix) for t in topics]
        new = [
            NewTopic(
                name,
                num_partitions=kafka.partitions,
                replication_factor=kafka.replication_factor,
                topic_configs={"max.message.bytes": str(_MAX_REQUEST_BYTES), **(config or {})},
            )
            for name in wanted
            if name not in existing
        ]
        if new:
            # Another service may create them at the same moment.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    finally:
        await admin.close()


async def delete_topics(kafka: KafkaSettings, prefix: str) -> list[str]:
    """Delete every topic whose name starts with `prefix` (test and benchmark clean-up)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, **_aiokafka_security(kafka))
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()


def _aiokafka_security(kafka: KafkaSettings) -> dict[str, Any]:
    from faststream.kafka.security import parse_security

    return parse_security(kafka_security(kafka))  # type: ignore[no-any-return]
