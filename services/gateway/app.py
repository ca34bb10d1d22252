"""The gateway (DESIGN.md §2).

Consumes: HTTP (`/v1/...`, tenant API keys), Slack (`/slack/commands`, `/slack/events`, signed),
`recommendation.completed` / `recommendation.failed`, and, for progress streams,
`retrieval.completed`, `specialist.task`, `specialist.result`.
Produces: `recommendation.requested`, `documents.submitted`.
Talks to: Kafka; tenants' webhooks (Standard Webhooks); Slack's `response_url` and Web API.

Answers reach clients by polling (`GET /v1/recommendations/{id}`), server-sent events, signed
webhooks and Slack. OpenAPI: `/docs`, `/openapi.json`; Prometheus: `/metrics`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI, Response

from loraswarm import __version__
from loraswarm.services.gateway import admin_routes, http_api, slack_routes
from loraswarm.services.gateway.asgi import BodySizeLimit, HttpTelemetry
from loraswarm.services.gateway.outcomes import record_outcome
from loraswarm.services.gateway.parts import SERVICE, Gateway
from loraswarm.services.gateway.progress import step_of
from loraswarm.shared.envelope import Envelope
from loraswarm.shared.events import (
    RecommendationCompleted,
    RecommendationFailed,
    RetrievalCompleted,
    SpecialistResult,
    SpecialistTask,
)
from loraswarm.shared.http_server import Server, serve_until_cancelled
from loraswarm.shared.metrics import ConsumerLagMonitor, metrics_response
from loraswarm.shared.settings import Settings
from loraswarm.shared.tracing import configure_tracing

log = logging.getLogger("loraswarm.gateway")

OUTCOME_GROUP = "gateway"
PROGRESS_GROUP = "gateway-progress"
OUTCOMES: tuple[type[Envelope], ...] = (RecommendationCompleted, RecommendationFailed)
STEPS: tuple[type[Envelope], ...] = (RetrievalCompleted, SpecialistTask, SpecialistResult)


def consume(gw: Gateway) -> None:
    """Subscribe the gateway's handlers on its bus."""

    async def on_outcome(event: RecommendationCompleted | RecommendationFailed) -> None:
        """Keep the outcome for GET and the progress stream; queue webhooks and Slack replies."""
        record_outcome(gw.store, gw.access, event)
        gw.board.notify(str(event.request_id))
        gw.dispatcher.wake()

    async def on_step(event: Envelope) -> None:
        """A step of a request this gateway took, for its progress stream."""
        step = step_of(event)
        request_id = str(event.request_id)
        if step is None or not gw.store.known_request(request_id):
            return
        if gw.store.add_progress(request_id, step[0], step[1], source_event_id=str(event.event_id)):
            gw.board.notify(request_id)

    gw.bus.consumers(OUTCOME_GROUP, dict.fromkeys(OUTCOMES, on_outcome), description=on_outcome.__doc__)
    gw.bus.consumers(PROGRESS_GROUP, dict.fromkeys(STEPS, on_step), description=on_step.__doc__)


def create_app(gw: Gateway) -> FastAPI:
    app = FastAPI(
        title="loraswarm gateway",
        version=__version__,
        description=(
            "Recommendations from a tenant's own LLM swarm. Authenticate with a tenant API key. "
            "`POST /v1/recommendations` answers 202 with a request id; the result comes by polling, "
            "server-sent events, signed webhooks (Standard Webhooks v1) or Slack."
        ),
    )
    app.state.gateway = gw
    app.include_router(http_api.router)
    app.include_router(slack_routes.router)
    app.include_router(admin_routes.router)

    @app.get("/healthz", tags=["operations"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        body, content_type = metrics_response()
        return Response(body, media_type=content_type)

    def limit_for(path: str) -> int:
        if path.startswith("/v1/documents"):
            return gw.config.max_documents_bytes
        return gw.config.max_request_bytes

    app.add_middleware(BodySizeLimit, limit_for=limit_for, service=SERVICE)
    # Added last, so outermost: refused (413) and unrouted requests are traced and counted too.
    app.add_middleware(HttpTelemetry, service=SERVICE)
    return app


def build(settings: Settings) -> tuple[Gateway, FastAPI]:
    gw = Gateway(settings)
    consume(gw)
    return gw, create_app(gw)


@contextlib.asynccontextmanager
async def _lag_monitor(settings: Settings) -> AsyncIterator[None]:
    if settings.broker != "kafka":
        yield
        return
    topics = [m.event_type for m in (*OUTCOMES, *STEPS)]
    async with ConsumerLagMonitor(settings.kafka, [OUTCOME_GROUP, PROGRESS_GROUP], topics):
        yield


async def run(settings: Settings, *, host: str, port: int) -> None:
    """Serve the gateway until cancelled (`loraswarm serve` cancels on SIGTERM and SIGINT)."""
    provider = configure_tracing(SERVICE, settings.tracing)
    gw, app = build(settings)
    server = Server(
        uvicorn.Config(
            app,
            host=host,
            port=port or settings.gateway.port,
            lifespan="off",
            access_log=False,
            # Streams (SSE) stay open: past half the grace they are closed, so the bus can stop too.
            timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s / 2)),
        )
    )
    try:
        async with gw, _lag_monitor(settings):
            await serve_until_cancelled(server)
    finally:
        provider.shutdown()
