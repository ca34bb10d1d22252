"""Slack: the slash command and the Events API (api.slack.com/interactivity/slash-commands,
api.slack.com/apis/events-api).

Every request is verified with the app's signing secret over its raw body before anything else
(slack_signature.py); a request that fails gets 401 and publishes nothing. The workspace
(`team_id`) names the tenant through the tenant configuration (`slack_team_ids`). Slack wants an
answer within 3 s, so a request is only published here; the recommendation follows later
through the slash command's `response_url`, or for an @mention as a reply in its thread
(chat.postMessage with the tenant's bot token), both queued as deliveries (outcomes.py).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from opentelemetry import trace

from loraswarm.services.gateway.http_api import Gw
from loraswarm.services.gateway.parts import Gateway
from loraswarm.services.gateway.slack_signature import SlackSignatureError, verify_slack_request
from loraswarm.shared.events import RecommendationRequested, ReplyTo
from loraswarm.shared.metrics import RATE_LIMITED, RECOMMENDATIONS, REQUESTS_REFUSED

log = logging.getLogger("loraswarm.gateway.slack")

_NAMESPACE = uuid.UUID("5d0c7a61-0f4e-4d2b-b3f1-7e9a2c4d6b80")
_MENTION = re.compile(r"<@[A-Z0-9]+(\|[^>]*)?>")

router = APIRouter(prefix="/slack", tags=["slack"])


async def verified_body(
    request: Request,
    gw: Gw,
    timestamp: Annotated[str | None, Header(alias="X-Slack-Request-Timestamp")] = None,
    signature: Annotated[str | None, Header(alias="X-Slack-Signature")] = None,
) -> bytes:
    """The raw body, if Slack signed it (else 401; 503 if no signing secret is configured)."""
    secret = gw.config.slack_signing_secret
    if secret is None:
        raise HTTPException(503, "Slack is not configured: set LORASWARM_SLACK_SIGNING_SECRET")
    body = await request.body()
    try:
        verify_slack_request(
            secret.get_secret_value(),
            timestamp=timestamp,
            signature=signature,
            body=body,
            now=time.time(),
            tolerance_s=gw.config.slack_tolerance_s,
        )
    except SlackSignatureError as exc:
        REQUESTS_REFUSED.labels("gateway", "invalid_signature").inc()
        log.warning("refused a Slack request: %s", exc)
        raise HTTPException(401, f"invalid Slack signature: {exc}") from exc
    return body


SignedBody = Annotated[bytes, Depends(verified_body)]


def _ephemeral(text: str) -> JSONResponse:
    return JSONResponse({"response_type": "ephemeral", "text": text})


async def _publish(gw: Gateway, event: RecommendationRequested, reply: dict[str, Any]) -> bool:
    """Record and publish a Slack request within Slack's 3 s; False if the bus did not take it."""
    request_id = str(event.request_id)
    trace.get_current_span().set_attribute("loraswarm.request_id", request_id)
    if not gw.store.add_request(
        request_id, event.tenant_id, user_id=event.user_id, channel="slack", reply=reply
    ):
        return True  # a retry of a request that is already on its way
    gw.store.add_progress(request_id, "accepted", {"channel": "slack"})
    try:
        await gw.publish(event)
    except Exception:
        log.exception("could not publish the Slack request %s", request_id)
        gw.store.forget_request(request_id)
        return False
    RECOMMENDATIONS.labels(event.tenant_id, "accepted").inc()
    return True


@router.post("/commands", summary="Slack slash command", response_class=JSONResponse)
async def slash_command(body: SignedBody, gw: Gw) -> JSONResponse:
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    team_id, text = form.get("team_id", ""), form.get("text", "").strip()
    tenant = gw.tenant_of_slack_team(team_id)
    if tenant is None:
        return _ephemeral(f"This Slack workspace ({team_id or 'unknown'}) is not connected to loraswarm.")
    if not text:
        return _ephemeral(f"Ask a question: `{form.get('command', '/ask')} how do we handle refunds?`")
    response_url = form.get("response_url", "")
    if not response_url.startswith(tuple(gw.config.slack_response_url_prefixes)):
        REQUESTS_REFUSED.labels("gateway", "bad_response_url").inc()
        log.warning("refused a slash command whose response_url %r is not Slack's", response_url)
        return _ephemeral("This request cannot be answered: its response_url is not Slack's.")
    retry_after = gw.rate_limit(tenant.tenant_id)
    if retry_after:
        RATE_LIMITED.labels("gateway", tenant.tenant_id).inc()
        return _ephemeral(f"Too many questions right now; try again in {retry_after} s.")
    event = RecommendationRequested(
        tenant_id=tenant.tenant_id,
        user_id=tenant.slack_users.get(form.get("user_id", "")),
        question=text[:8000],
        deadline_s=gw.config.default_deadline_s,
        reply_to=ReplyTo(kind="slack", slack_response_url=response_url),
    )
    if not await _publish(gw, event, {"response_url": response_url}):
        return _ephemeral("Sorry, I could not take that question right now; try again in a moment.")
    return _ephemeral(f"Working on it… (request `{event.request_id}`)")


@router.post("/events", summary="Slack Events API", response_class=JSONResponse)
async def events(
    body: SignedBody,
    gw: Gw,
    retry_num: Annotated[str | None, Header(alias="X-Slack-Retry-Num")] = None,
) -> JSONResponse:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise HTTPException(400, "the body is not JSON") from exc
    if payload.get("type") == "url_verification":
        return JSONResponse({"challenge": payload.get("challenge", "")})
    if payload.get("type") != "event_callback":
        return JSONResponse({"ok": True})
    event_id = str(payload.get("event_id", ""))
    inner = payload.get("event") or {}
    team_id = str(payload.get("team_id") or inner.get("team") or "")
    if not event_id or inner.get("type") != "app_mention" or inner.get("bot_id"):
        return JSONResponse({"ok": True})
    # Slack retries an event it thinks we missed (X-Slack-Retry-Num); the event id makes the
    # request id, so a retry, or a race with the first try, publishes nothing new.
    request_id = _request_id(team_id, event_id)
    if gw.store.known_request(str(request_id)):
        log.info("Slack event %s again (retry %s): already taken", event_id, retry_num)
        return JSONResponse({"ok": True})
    tenant = gw.tenant_of_slack_team(team_id)
    question = _MENTION.sub("", str(inner.get("text", ""))).strip()
    if tenant is None or not question:
        return JSONResponse({"ok": True})
    if gw.rate_limit(tenant.tenant_id):
        RATE_LIMITED.labels("gateway", tenant.tenant_id).inc()
        return JSONResponse({"ok": True})
    event = RecommendationRequested(
        event_id=uuid.uuid5(_NAMESPACE, f"event:{team_id}:{event_id}"),
        tenant_id=tenant.tenant_id,
        request_id=request_id,
        user_id=tenant.slack_users.get(str(inner.get("user") or "")),
        question=question[:8000],
        deadline_s=gw.config.default_deadline_s,
        reply_to=ReplyTo(kind="slack"),
    )
    reply = {"channel": inner.get("channel"), "thread_ts": inner.get("thread_ts") or inner.get("ts")}
    if not await _publish(gw, event, reply):
        # Not acknowledged: Slack will retry, and the retry may get through.
        raise HTTPException(503, "could not take the event now")
    return JSONResponse({"ok": True})


def _request_id(team_id: str, event_id: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"request:{team_id}:{event_id}")
