"""Slack request signatures (api.slack.com/authentication/verifying-requests-from-slack).

`X-Slack-Signature` is `v0=` + hex HMAC-SHA256(signing secret, `v0:{timestamp}:{raw body}`),
with the timestamp from `X-Slack-Request-Timestamp`. A request is taken only if the timestamp
is within the tolerance of now (a replayed old request is refused) and the signature matches
under a constant-time comparison. Verified over the raw bytes, before any parsing.
"""

from __future__ import annotations

import hashlib
import hmac


class SlackSignatureError(Exception):
    """Why a request is not from Slack (or not any more): the 401's reason."""


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify_slack_request(
    secret: str,
    *,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    tolerance_s: int = 300,
) -> None:
    """Return if the request is Slack's, else raise `SlackSignatureError` saying why."""
    if not timestamp or not signature:
        raise SlackSignatureError("missing X-Slack-Request-Timestamp or X-Slack-Signature")
    try:
        sent = int(timestamp)
    except ValueError as exc:
        raise SlackSignatureError("X-Slack-Request-Timestamp is not a unix time") from exc
    if abs(now - sent) > tolerance_s:
        raise SlackSignatureError(f"timestamp is more than {tolerance_s} s from now (a replay?)")
    expected = slack_signature(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise SlackSignatureError("signature does not match the body")
