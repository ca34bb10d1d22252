"""How this project reaches a Kafka cluster: security settings (SASL and/or TLS, for FastStream
and for bare aiokafka clients alike), the broker factory, and topic creation and clean-up.

Everything that opens a Kafka connection (the event bus, the planner's state topic, the metrics'
lag probe, the CLI's preflight) takes its settings from here, so one cluster is configured once.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from loraswarm.shared.settings import KafkaSettings, Settings
from loraswarm.shared.topics import ALL_TOPICS, prefixed

# Large enough for a dead letter that carries a message at the consumer's size limit, base64'd.
MAX_REQUEST_BYTES = 16 * 1024 * 1024


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


# Batches fill up while a request is in flight; a lone event does not wait.
MAX_BATCH_BYTES = 256 * 1024


def make_broker(settings: Settings, *, service: str, consumer_only: bool = False) -> KafkaBroker:
    """A FastStream Kafka broker for `service`, configured from `settings.kafka`.

    `consumer_only`: the broker opens no producer (the event bus publishes through its own,
    `make_producer`, which skips FastStream's per-message publishing machinery).
    """
    kafka = settings.kafka
    return KafkaBroker(
        kafka.bootstrap_servers.split(","),
        client_id=f"{kafka.client_id}-{service}",
        security=kafka_security(kafka),
        acks="all",
        max_request_size=MAX_REQUEST_BYTES,
        max_batch_size=MAX_BATCH_BYTES,
        consumer_only=consumer_only,
        logger=None,
    )


def make_producer(kafka: KafkaSettings, *, client_id: str) -> AIOKafkaProducer:
    """A bare aiokafka producer with the same settings as `make_broker`'s (not started)."""
    return AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=client_id,
        acks="all",
        max_request_size=MAX_REQUEST_BYTES,
        max_batch_size=MAX_BATCH_BYTES,
        **aiokafka_security(kafka),
    )


class KafkaSender:
    """Sends records to Kafka through one bare aiokafka producer (the event bus's `RecordSender`).

    `send` returns once the record is queued, with an awaitable of the broker's acknowledgement:
    waiting on each at once is one round trip per event, gathering several lets the producer
    fill a batch. FastStream's own publishing adds a command object, middleware and a second
    header encoding per message, which cost as much as aiokafka's send itself.
    """

    def __init__(self, kafka: KafkaSettings, *, client_id: str) -> None:
        self._producer = make_producer(kafka, client_id=client_id)
        self._partitions = KeyPartitions()

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(
        self, topic: str, value: bytes, key: bytes | None, headers: dict[str, str]
    ) -> Awaitable[object]:
        partitions = None if key is None else self._producer.client.cluster.partitions_for_topic(topic)
        return await self._producer.send(  # type: ignore[no-any-return]
            topic,
            value,
            key=key,
            # Unknown partitions (no metadata yet): aiokafka waits for them and partitions itself.
            partition=self._partitions.of(topic, key, partitions) if key and partitions else None,
            headers=[(name, text.encode()) for name, text in headers.items()],
        )


class KeyPartitions:
    """The partition aiokafka's default partitioner gives a key, remembered per topic and key.

    Records are keyed by tenant, so a few keys recur: aiokafka's producer would hash each
    record's key (murmur2, in Python) and list the topic's partitions twice, about 3 µs a record.
    The answer is that same call on the same arguments, worked out again when the topic's
    partitions change; past `limit` remembered keys the memory starts again.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._partitioner = DefaultPartitioner()
        # (topic, key) -> (the topic's partitions when computed, the key's partition)
        self._known: dict[tuple[str, bytes], tuple[frozenset[int], int]] = {}

    def of(self, topic: str, key: bytes, partitions: set[int]) -> int:
        known = self._known.get((topic, key))
        if known is not None and known[0] == partitions:
            return known[1]
        listed = list(partitions)  # as aiokafka's producer passes them
        partition = int(self._partitioner(key, listed, listed))
        if len(self._known) >= self.limit:
            self._known.clear()
        self._known[topic, key] = (frozenset(partitions), partition)
        return partition


async def ensure_topics(
    kafka: KafkaSettings, topics: tuple[str, ...] = ALL_TOPICS, *, config: dict[str, str] | None = None
) -> None:
    """Create the project's topics that do not exist yet, with the configured layout."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    params = aiokafka_security(kafka)
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
                topic_configs={"max.message.bytes": str(MAX_REQUEST_BYTES), **(config or {})},
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

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, **aiokafka_security(kafka))
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()


def aiokafka_security(kafka: KafkaSettings) -> dict[str, Any]:
    from faststream.kafka.security import parse_security

    return parse_security(kafka_security(kafka))  # type: ignore[no-any-return]
