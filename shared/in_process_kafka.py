"""The embedded default's broker: FastStream's in-memory Kafka, one per topic prefix, shared by
every EventBus of the process, with Kafka's asynchronous delivery and per-partition order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from faststream.kafka import KafkaBroker, TestKafkaBroker

from loraswarm.shared.kafka_client import make_broker
from loraswarm.shared.settings import Settings

log = logging.getLogger("loraswarm.bus")


class InProcessKafka:
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


class InProcessSender:
    """Sends records to the in-process broker (the event bus's `RecordSender` in memory): queued
    at once and delivered by the broker's workers, so the acknowledgement is immediate."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(
        self, topic: str, value: bytes, key: bytes | None, headers: dict[str, str]
    ) -> Awaitable[object]:
        IN_PROCESS.enqueue(self._settings, topic, value, key, headers)
        acknowledged = asyncio.get_running_loop().create_future()
        acknowledged.set_result(None)
        return acknowledged


def _unfinished(queue: asyncio.Queue[Any]) -> bool:
    # asyncio.Queue counts puts not yet marked done, but exposes the count only privately.
    return bool(getattr(queue, "_unfinished_tasks", 0))


IN_PROCESS = InProcessKafka()
