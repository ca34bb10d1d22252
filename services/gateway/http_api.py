"""The gateway's HTTP API for tenants: recommendations, their progress and deliveries, documents.

Every route takes a credential (`Authorization: Bearer <key or JWT>` or `X-API-Key`): a
tenant-wide service key, a key bound to one user, or a signed user assertion (JWT) from the
tenant's identity provider (services/gateway/access.py). The tenant and the user come from the
credential, never from the body: a body's `user_id` must be the caller's own, or — for a service
key — is allowed only where the tenant lets service keys act for users. A request id of another
tenant or another user answers exactly like an unknown one (404), so ids cannot be probed.
Refusals are 401 (who are you?) and 403 (not you), in the API's error shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Security
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field

from loraswarm.services.gateway.access import Caller, Forbidden, Unauthorized, authenticate
from loraswarm.services.gateway.parts import Gateway
from loraswarm.services.gateway.progress import TERMINAL
from loraswarm.services.gateway.store import RequestRecord
from loraswarm.shared.envelope import Envelope
from loraswarm.shared.events import (
    Document,
    DocumentsSubmitted,
    RecommendationCompleted,
    RecommendationFailed,
    RecommendationRequested,
    ReplyTo,
    UserId,
)
from loraswarm.shared.metrics import RATE_LIMITED, RECOMMENDATIONS, REQUESTS_REFUSED

log = logging.getLogger("loraswarm.gateway.http")

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="A tenant API key.")
_bearer = HTTPBearer(auto_error=False, description="A tenant API key as a bearer token.")
_IDEMPOTENCY_NAMESPACE = uuid.UUID("c0a5e2d4-5f3b-4e61-8a8e-3d7f6b2a9c14")


# ---------------------------------------------------------------- bodies


class RecommendationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=8000, description="What the user asks.")
    user_id: UserId | None = Field(default=None, description="The user inside the tenant, if any.")
    deadline_s: float | None = Field(
        default=None, gt=0, le=3600, description="Whole-request deadline; default: the gateway's."
    )
    sources: list[str] = Field(default_factory=list, description="Data sources to use; empty = all.")


class Accepted(BaseModel):
    request_id: uuid.UUID
    status: Literal["pending"] = "pending"
    status_url: str = Field(description="GET it for the result.")
    events_url: str = Field(description="Server-sent events of the request's progress.")


class RecommendationView(BaseModel):
    request_id: uuid.UUID
    status: Literal["pending", "completed", "failed"]
    created_at: datetime
    updated_at: datetime
    completed: RecommendationCompleted | None = None
    failed: RecommendationFailed | None = None


class DocumentsUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[Document] = Field(min_length=1, max_length=1000)


class DocumentsAccepted(BaseModel):
    request_id: uuid.UUID
    event_id: uuid.UUID
    documents: int


class DeliveryAttemptView(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryView(BaseModel):
    webhook_id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    kind: Literal["webhook", "slack_response_url", "slack_message"]
    target: str
    event_type: str
    status: Literal["pending", "delivered", "failed", "disabled"]
    attempts: list[DeliveryAttemptView]


def view_of(record: RequestRecord) -> RecommendationView:
    result = record.result
    return RecommendationView(
        request_id=uuid.UUID(record.request_id),
        status=record.status,
        created_at=datetime.fromtimestamp(record.created_at, UTC),
        updated_at=datetime.fromtimestamp(record.updated_at, UTC),
        completed=RecommendationCompleted.model_validate(result) if record.status == "completed" else None,
        failed=RecommendationFailed.model_validate(result) if record.status == "failed" else None,
    )


def _sse(event: str, data: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"{head}event: {event}\n{lines}\n"


# ---------------------------------------------------------------- dependencies


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


Gw = Annotated[Gateway, Depends(gateway)]


async def caller(
    gw: Gw,
    key: Annotated[str | None, Security(_api_key)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> Caller:
    """Who the request comes from (tenant, and user where the credential names one), or 401."""
    token = key or (bearer.credentials if bearer else None)
    if not token:
        REQUESTS_REFUSED.labels("gateway", "unauthorized").inc()
        raise HTTPException(
            401,
            "missing credential: send `Authorization: Bearer <API key or JWT>` or `X-API-Key: <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        found = authenticate(gw.access, token)
    except Unauthorized as exc:
        REQUESTS_REFUSED.labels("gateway", "unauthorized").inc()
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    trace.get_current_span().set_attribute("loraswarm.tenant_id", found.tenant_id)
    return found


Who = Annotated[Caller, Depends(caller)]


def forbidden(exc: Forbidden) -> HTTPException:
    REQUESTS_REFUSED.labels("gateway", "forbidden").inc()
    return HTTPException(403, str(exc))


async def within_rate(gw: Gw, who: Who) -> Caller:
    """The caller, if its tenant is within its rate limit, else 429 with Retry-After."""
    retry_after = gw.rate_limit(who.tenant_id)
    if retry_after:
        RATE_LIMITED.labels("gateway", who.tenant_id).inc()
        raise HTTPException(
            429,
            f"tenant {who.tenant_id} is over its rate limit; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
    return who


LimitedCaller = Annotated[Caller, Depends(within_rate)]


def owned(gw: Gateway, request_id: uuid.UUID, who: Caller) -> RequestRecord:
    """The caller's own request; another tenant's or another user's is as unknown as a made-up id."""
    record = gw.store.get_request(str(request_id), who.tenant_id)
    if record is None or not who.may_read(record.user_id):
        raise HTTPException(404, f"no request {request_id}")
    return record


async def publish(gw: Gateway, event: Envelope) -> None:
    """Publish, or refuse with 413 / 503 so the client knows nothing was taken."""
    size = len(event.model_dump_json().encode())
    limit = gw.settings.kafka.max_message_bytes
    if size > limit:
        REQUESTS_REFUSED.labels("gateway", "too_large").inc()
        raise HTTPException(413, f"the event would be {size} bytes, over Kafka's limit of {limit}")
    try:
        await gw.publish(event)
    except Exception as exc:
        log.exception("could not publish %s %s", event.type, event.event_id)
        REQUESTS_REFUSED.labels("gateway", "unavailable").inc()
        raise HTTPException(
            503, "the event bus did not take the request; retry", headers={"Retry-After": "1"}
        ) from exc


# ---------------------------------------------------------------- routes

router = APIRouter(prefix="/v1", tags=["tenants"])


@router.post(
    "/recommendations",
    status_code=202,
    response_model=Accepted,
    summary="Ask for a recommendation",
    responses={401: {}, 403: {}, 413: {}, 422: {}, 429: {}, 503: {}},
)
async def request_recommendation(
    body: RecommendationRequest,
    gw: Gw,
    who: LimitedCaller,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=255, description="Retries with the same key get the same request, once."),
    ] = None,
) -> JSONResponse:
    tenant_id = who.tenant_id
    try:
        user_id = who.acting_for(body.user_id)
    except Forbidden as exc:
        raise forbidden(exc) from None
    if idempotency_key:
        # Scoped by user too: one user's key cannot replay into another user's request.
        request_id = uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{tenant_id}\n{user_id or ''}\n{idempotency_key}")
    else:
        request_id = uuid.uuid4()
    trace.get_current_span().set_attribute("loraswarm.request_id", str(request_id))
    accepted = Accepted(
        request_id=request_id,
        status_url=f"/v1/recommendations/{request_id}",
        events_url=f"/v1/recommendations/{request_id}/events",
    )
    response = JSONResponse(
        accepted.model_dump(mode="json"), status_code=202, headers={"Location": accepted.status_url}
    )
    event = RecommendationRequested(
        tenant_id=tenant_id,
        request_id=request_id,
        user_id=user_id,
        question=body.question,
        deadline_s=body.deadline_s or gw.config.default_deadline_s,
        sources=body.sources,
        reply_to=ReplyTo(kind="http"),
    )
    if not gw.store.add_request(str(request_id), tenant_id, user_id=user_id, channel="http"):
        return response  # the same Idempotency-Key again: that request is already on its way
    gw.store.add_progress(str(request_id), "accepted", {"channel": "http"})
    try:
        await publish(gw, event)
    except HTTPException:
        gw.store.forget_request(str(request_id))
        raise
    RECOMMENDATIONS.labels(tenant_id, "accepted").inc()
    return response


@router.get(
    "/recommendations/{request_id}",
    response_model=RecommendationView,
    summary="A request's status and, once there, its result",
    responses={401: {}, 404: {}},
)
async def get_recommendation(request_id: uuid.UUID, gw: Gw, who: Who) -> RecommendationView:
    return view_of(owned(gw, request_id, who))


@router.get(
    "/recommendations/{request_id}/events",
    summary="Server-sent events of a request's progress",
    description=(
        "Each step is an event (`accepted`, `retrieved`, `specialist_asked`, `specialist_answered`), "
        "numbered by `id`; the stream ends with `completed` or `failed`, whose data is the same JSON "
        "as `GET /v1/recommendations/{id}`. Send `Last-Event-ID` to resume after a step."
    ),
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 401: {}, 404: {}},
)
async def recommendation_events(
    request_id: uuid.UUID,
    gw: Gw,
    who: Who,
    last_event_id: Annotated[int | None, Header(description="Resume after this step.")] = None,
) -> StreamingResponse:
    owned(gw, request_id, who)
    return StreamingResponse(
        progress_stream(gw, str(request_id), who.tenant_id, last_event_id or 0),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/recommendations/{request_id}/deliveries",
    response_model=list[DeliveryView],
    summary="The delivery log of a request: its webhooks and Slack replies, every attempt",
    responses={401: {}, 404: {}},
)
async def deliveries(request_id: uuid.UUID, gw: Gw, who: Who) -> list[DeliveryView]:
    owned(gw, request_id, who)
    return [
        DeliveryView(
            webhook_id=d.webhook_id,
            kind=d.kind,
            target=d.target,
            event_type=d.event_type,
            status=d.status,
            attempts=[
                DeliveryAttemptView(
                    attempt=a.attempt,
                    at=datetime.fromtimestamp(a.at, UTC),
                    status_code=a.status_code,
                    error=a.error,
                    duration_ms=a.duration_ms,
                )
                for a in gw.store.attempts_for(d.webhook_id)
            ],
        )
        for d in gw.store.deliveries_for(str(request_id))
    ]


@router.post(
    "/documents",
    status_code=202,
    response_model=DocumentsAccepted,
    summary="Submit documents for ingestion into the tenant's own index",
    responses={401: {}, 403: {}, 413: {}, 422: {}, 429: {}, 503: {}},
)
async def submit_documents(body: DocumentsUpload, gw: Gw, who: LimitedCaller) -> DocumentsAccepted:
    for doc in body.documents:
        owner = doc.visibility.removeprefix("user:") if doc.visibility != "company" else None
        if who.user_id is not None and owner != who.user_id:
            # A user adds to her own private scope only: never the company's, never another user's.
            raise forbidden(Forbidden(f"user {who.user_id!r} may submit only user:{who.user_id} documents"))
        if who.user_id is None and owner is not None and not who.acts_for_users:
            raise forbidden(Forbidden("a service key may not write a user's private documents here"))
    event = DocumentsSubmitted(tenant_id=who.tenant_id, documents=body.documents)
    trace.get_current_span().set_attribute("loraswarm.request_id", str(event.request_id))
    await publish(gw, event)
    return DocumentsAccepted(
        request_id=event.request_id, event_id=event.event_id, documents=len(body.documents)
    )


async def progress_stream(gw: Gateway, request_id: str, tenant_id: str, after: int) -> AsyncIterator[str]:
    """The steps of a request as server-sent events, until its outcome (or the client leaves)."""
    with gw.board.watch(request_id) as news:
        while True:
            news.clear()
            for step in gw.store.progress_since(request_id, after):
                after = step.seq
                if step.stage in TERMINAL:
                    record = gw.store.get_request(request_id, tenant_id)
                    data: Any = view_of(record).model_dump(mode="json") if record else step.data
                    yield _sse(step.stage, json.dumps(data), step.seq)
                    return
                yield _sse(step.stage, json.dumps(step.data), step.seq)
            try:
                await asyncio.wait_for(news.wait(), timeout=gw.config.sse_heartbeat_s)
            except TimeoutError:
                yield ": keep-alive\n\n"
