"""The Kafka client's remembered partitions: always aiokafka's default partitioner's answer."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from loraswarm.shared.kafka_client import KeyPartitions


def test_a_remembered_partition_is_the_default_partitioners_even_after_the_topic_grows() -> None:
    partitioner = DefaultPartitioner()
    keys = [f"tenant-{i}".encode() for i in range(200)] + [b"acme", b"x"]
    remembered = KeyPartitions(limit=50)  # small: the memory starts again several times
    for count in (1, 6, 12, 6):
        partitions = set(range(count))
        listed = list(partitions)
        for _ in range(2):  # computed, then remembered (or computed again past the limit)
            for key in keys:
                assert remembered.of("t", key, partitions) == partitioner(key, listed, listed)
    assert remembered.of("other", b"acme", {0, 1}) == partitioner(b"acme", [0, 1], [0, 1])
