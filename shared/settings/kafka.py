"""Kafka: the cluster, the topics the project creates, and the consumer policy."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class KafkaSettings(BaseModel):
    bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Comma-separated Kafka bootstrap servers."
    )
    client_id: str = Field(default="loraswarm", description="Kafka client id of every producer and consumer.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    ssl_cafile: Path | None = Field(
        default=None, description="CA bundle that signs the brokers' certificates."
    )
    ssl_certfile: Path | None = Field(default=None, description="Client certificate for mutual TLS.")
    ssl_keyfile: Path | None = Field(default=None, description="Client private key for mutual TLS.")
    topic_prefix: str = Field(
        default="",
        description="Prefix put before every topic name and consumer group id, to share a cluster.",
    )
    partitions: int = Field(default=6, ge=1, description="Partitions of each topic the project creates.")
    replication_factor: int = Field(
        default=1, ge=1, description="Replication factor of each topic the project creates."
    )
    max_message_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="Largest message a consumer handles; bigger ones go to the dead-letter topic.",
    )
    handler_attempts: int = Field(
        default=3, ge=1, description="Attempts of a failing handler before its message goes to dlq."
    )
    commit_every: int = Field(
        default=1000, ge=1, description="Commit offsets at least every this many handled messages."
    )
    commit_interval_s: float = Field(
        default=0.1, gt=0, description="Commit handled offsets at most this long after handling."
    )
    retry_backoff_s: float = Field(
        default=0.2, ge=0, description="First pause between handler attempts; doubles each time."
    )

    def group(self, name: str) -> str:
        """The Kafka group id of the project's consumer group `name` under this topic prefix: two
        deployments (or two test runs) sharing a cluster must not share a group, or each one's
        members join the other's rebalances and the lag monitor reads the other's offsets."""
        return f"{self.topic_prefix}{name}"
