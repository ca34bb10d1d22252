"""Events to Kafka records and back, with the checks that decide what goes to the dead-letter topic.

A record is: key = tenant_id (UTF-8), value = the event's JSON, headers = content type, event
type, request id and the W3C trace context (`traceparent`, `tracestate`). The request id is in a
header so that a consumer can order a request's records (shared/lanes.py) without parsing them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from loraswarm.shared.envelope import Envelope
from loraswarm.shared.events import EVENT_BY_TYPE
from loraswarm.shared.tracing import inject_context

CONTENT_TYPE = "application/json"
REQUEST_ID_HEADER = "request-id"

PoisonKind = Literal["not_json", "too_large", "unknown_type", "validation", "key_mismatch"]


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    key: bytes
    value: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Poison:
    """Why a record cannot be handled."""

    kind: PoisonKind
    reason: str


def encode(event: Envelope) -> EncodedEvent:
    # These names are tracing.BUS_HEADERS: a consumer leaves them out of trace extraction.
    headers = {
        "content-type": CONTENT_TYPE,
        "event-type": event.type,
        REQUEST_ID_HEADER: str(event.request_id),
    }
    # The current (send) span's context: the consumer's span joins the producer's trace.
    inject_context(headers)
    # `model_dump_json` is this serializer's bytes decoded to a str, which would be encoded back.
    value = event.__pydantic_serializer__.to_json(event)
    return EncodedEvent(key=event.tenant_id.encode(), value=value, headers=headers)


def _validation_summary(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        parts.append(f"{loc}: {e['msg']}")
    more = f" (+{err.error_count() - 5} more)" if err.error_count() > 5 else ""
    return "; ".join(parts) + more


def decode(
    value: bytes | None,
    key: bytes | None,
    *,
    expected_type: str,
    max_bytes: int,
) -> Envelope | Poison:
    """Decode one record meant for the `expected_type` topic, or say why it is poison. Never raises."""
    if value is None:
        return Poison("not_json", "the record has no value (a tombstone?)")
    if len(value) > max_bytes:
        return Poison("too_large", f"{len(value)} bytes is over the {max_bytes}-byte limit")
    model = EVENT_BY_TYPE[expected_type]
    try:
        # The fast path: one pass of pydantic's JSON parser.
        event = model.model_validate_json(value)
    except ValidationError as exc:
        return _diagnose(value, expected_type, exc)
    return _check_key(event, key)


def _diagnose(value: bytes, expected_type: str, exc: ValidationError) -> Poison:
    """Why a record failed validation, in the most useful of the dead-letter categories."""
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return Poison("not_json", f"not JSON: {err}")
    if not isinstance(data, dict):
        return Poison("not_json", f"expected a JSON object, got {type(data).__name__}")
    event_type = data.get("type")
    if not isinstance(event_type, str) or event_type not in EVENT_BY_TYPE:
        return Poison("unknown_type", f"unknown event type {event_type!r}")
    if event_type != expected_type:
        return Poison(
            "validation", f"event type {event_type!r} does not belong on the {expected_type!r} topic"
        )
    return Poison("validation", f"{event_type}: {_validation_summary(exc)}")


def _check_key(event: Envelope, key: bytes | None) -> Envelope | Poison:
    if key is None:
        return Poison("key_mismatch", f"no key: records must be keyed by tenant_id {event.tenant_id!r}")
    if key != event.tenant_id.encode():
        shown = key.decode("utf-8", "replace")
        return Poison(
            "key_mismatch", f"key {shown!r} disagrees with the envelope's tenant_id {event.tenant_id!r}"
        )
    return event
