"""Standard Webhooks v1 (github.com/standard-webhooks/standard-webhooks, spec/standard-webhooks.md).

A message carries `webhook-id` (the same on every retry: the receiver's idempotency key),
`webhook-timestamp` (unix seconds of this attempt) and `webhook-signature`: one
`v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>` per secret, space-separated, so a
receiver that knows either the old or the new secret accepts the message while secrets rotate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Sequence

from loraswarm.services.gateway.access import secret_bytes
from loraswarm.shared.events import RecommendationCompleted, RecommendationFailed

_ID_NAMESPACE = uuid.UUID("2f6a3f4e-1c55-4b7b-9d0e-8a3c5b1e7d21")


def message_id(request_id: str, kind: str, target: str) -> str:
    """The same id for the same request, channel and target: one delivery, however often asked."""
    return "msg_" + uuid.uuid5(_ID_NAMESPACE, f"{request_id}\n{kind}\n{target}").hex


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    signatures = [
        "v1," + base64.b64encode(hmac.new(secret_bytes(s), content, hashlib.sha256).digest()).decode()
        for s in secrets
    ]
    return " ".join(signatures)


def signed_headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def webhook_body(event: RecommendationCompleted | RecommendationFailed) -> str:
    """The payload shape the spec recommends: `{type, timestamp, data}`; `data` is the whole event."""
    return json.dumps(
        {
            "type": event.type,
            "timestamp": event.occurred_at.isoformat(),
            "data": event.model_dump(mode="json"),
        },
        separators=(",", ":"),
    )
