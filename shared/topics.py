"""Kafka topic names: one topic per event type, plus the dead-letter topic.

Topics are keyed by `tenant_id` (DESIGN.md §3). A deployment may put a prefix in front of every
name (`LORASWARM_KAFKA__TOPIC_PREFIX`) to share a cluster; the names below are without it.
"""

from __future__ import annotations

from loraswarm.shared.envelope import Envelope
from loraswarm.shared.events import EVENT_MODELS

DLQ = "dlq"

# The topic of an event type is the type itself: one name to learn, and `tail TOPIC` shows it.
EVENT_TOPICS: tuple[str, ...] = tuple(m.event_type for m in EVENT_MODELS)
ALL_TOPICS: tuple[str, ...] = (*EVENT_TOPICS, DLQ)


def topic_of(event: Envelope | type[Envelope]) -> str:
    """The (unprefixed) topic an event is published to."""
    return event.event_type


def prefixed(topic: str, prefix: str) -> str:
    return f"{prefix}{topic}"


def unprefixed(topic: str, prefix: str) -> str:
    return topic.removeprefix(prefix) if prefix else topic
