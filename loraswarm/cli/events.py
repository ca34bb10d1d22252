"""`loraswarm publish TOPIC FILE|-` and `loraswarm tail TOPIC`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import uuid
from pathlib import Path

import typer
from rich.console import Console
from rich.json import JSON

from loraswarm.shared.codec import Poison, decode
from loraswarm.shared.events import EVENT_BY_TYPE
from loraswarm.shared.settings import Settings
from loraswarm.shared.topics import ALL_TOPICS, DLQ, prefixed

console = Console()
err = Console(stderr=True)


def _known_topic(topic: str) -> str:
    if topic not in ALL_TOPICS:
        err.print(f"unknown topic {topic!r}; known: {', '.join(ALL_TOPICS)}")
        raise typer.Exit(2)
    return topic


def publish(
    topic: str = typer.Argument(..., help="An event topic, e.g. recommendation.requested."),
    source: str = typer.Argument(..., help="A JSON file with one event, or - for standard input."),
) -> None:
    """Validate one event against its schema, then publish it keyed by its tenant_id."""
    _known_topic(topic)
    if topic == DLQ:
        err.print("the dlq topic is written by consumers only")
        raise typer.Exit(2)
    raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    settings = Settings()
    try:
        tenant = json.loads(raw).get("tenant_id")
    except (ValueError, AttributeError):
        tenant = None
    key = tenant.encode() if isinstance(tenant, str) else None
    checked = decode(raw, key, expected_type=topic, max_bytes=settings.kafka.max_message_bytes)
    if isinstance(checked, Poison):
        err.print(f"[red]not published[/red] ({checked.kind}): {checked.reason}", highlight=False)
        raise typer.Exit(1)
    asyncio.run(_publish(settings, topic, checked.model_dump_json().encode(), key))
    console.print(f"published {checked.type} {checked.event_id} for tenant {checked.tenant_id} to {topic}")


async def _publish(settings: Settings, topic: str, value: bytes, key: bytes | None) -> None:
    from loraswarm.shared.bus import EventBus

    async with EventBus(settings, service="cli") as bus:
        await bus.publish_raw(topic, value, key=key, headers={"content-type": "application/json"})


def tail(
    topic: str = typer.Argument(..., help="The topic to read, e.g. recommendation.completed or dlq."),
    from_beginning: bool = typer.Option(False, "--from-beginning", help="Start at the oldest record."),
    max_events: int = typer.Option(0, "--max", help="Stop after this many (0: run until Ctrl-C)."),
    timeout_s: float = typer.Option(0, "--timeout", help="Stop after this many idle seconds (0: never)."),
) -> None:
    """Pretty-print the events on a topic as they arrive (never joins a consumer group)."""
    _known_topic(topic)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_tail(Settings(), topic, from_beginning, max_events, timeout_s))


async def _tail(
    settings: Settings, topic: str, from_beginning: bool, max_events: int, timeout_s: float
) -> None:
    from aiokafka import AIOKafkaConsumer

    from loraswarm.shared.kafka_client import aiokafka_security

    kafka = settings.kafka
    consumer = AIOKafkaConsumer(
        prefixed(topic, kafka.topic_prefix),
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-tail-{uuid.uuid4().hex[:6]}",
        group_id=None,  # a reader, not a member: it moves nobody's offsets
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        **aiokafka_security(kafka),
    )
    await consumer.start()
    seen = 0
    try:
        while not max_events or seen < max_events:
            batch = await consumer.getmany(timeout_ms=int(timeout_s * 1000) if timeout_s else 1000)
            if not batch and timeout_s:
                break
            for records in batch.values():
                for record in records:
                    render(topic, record.partition, record.offset, record.key, record.value)
                    seen += 1
    finally:
        await consumer.stop()


def render(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
    shown_key = key.decode("utf-8", "replace") if key else "-"
    try:
        data = json.loads(value or b"")
    except ValueError:
        console.print(
            f"[bold]{topic}[/bold] [{partition}@{offset}] key={shown_key} (not JSON, {len(value or b'')} bytes)"
        )
        return
    kind = data.get("type", "?") if isinstance(data, dict) else "?"
    known = "" if kind in EVENT_BY_TYPE or kind == DLQ else " [yellow](unknown type)[/yellow]"
    console.rule(f"{kind}{known}  {topic}[{partition}]@{offset}  key={shown_key}", align="left")
    if kind == DLQ and isinstance(data, dict) and "value_b64" in data:
        original = base64.b64decode(data["value_b64"])
        data["value_b64"] = f"<{len(original)} bytes> {original[:200].decode('utf-8', 'replace')}"
    console.print(JSON.from_data(data))
