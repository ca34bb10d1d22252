"""The model server: HTTP (TGI API + OpenAI chat API) in, tokens out; consumes `adapter.published`.

    consumes   HTTP: POST / /generate /generate_stream /v1/chat/completions /tokenize,
               GET /info /health /metrics /v1/models, /admin/adapters
               Kafka: adapter.published -> load the new version now (it would load on first use anyway)
    produces   nothing on Kafka
    talks to   the base model (one copy) and every tenant's adapters in the adapter store

Tenancy (see tenancy.py): with `LORASWARM_MODEL_SERVER__API_KEYS` set, the API key decides the
tenant; otherwise the `X-Tenant-Id` header does. A request may only use its tenant's adapters;
an unknown adapter is a 404 `adapter_not_found`, never the base model in disguise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from loraswarm.services.model_server.api import create_app
from loraswarm.services.model_server.server import ModelServer
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import AdapterPublished
from loraswarm.shared.http_server import Server, serve_until_cancelled
from loraswarm.shared.settings import Settings
from loraswarm.shared.tracing import configure_tracing

log = logging.getLogger("loraswarm.model_server")

SERVICE = "model-server"
_EVENTS_RETRY_S = 10.0


def wire_events(bus: EventBus, server: ModelServer, group: str) -> None:
    @bus.consumer(AdapterPublished, group=group)
    async def on_adapter_published(event: AdapterPublished) -> None:
        """Load a newly published adapter version and forget the older ones."""
        adapter_id = event.adapter_id.split("@", 1)[0] + f"@{event.version}"
        await asyncio.to_thread(server.on_adapter_published, adapter_id)


async def consume_events(settings: Settings, server: ModelServer) -> None:
    """`adapter.published` until cancelled; while the broker is unreachable, retry and keep serving.

    Events only warm the cache (requests read the store themselves), so a model server without
    Kafka still serves every adapter, each loaded on its first use.
    """
    while True:
        bus = EventBus(settings, service=SERVICE)
        wire_events(bus, server, settings.model_server.event_group)
        try:
            async with bus:
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the broker is down or misconfigured: say so, retry
            log.error(
                "adapter.published consumer unavailable (%s: %s); retrying in %.0f s. "
                "Adapters still load on first use.",
                type(exc).__name__,
                exc,
                _EVENTS_RETRY_S,
            )
            await asyncio.sleep(_EVENTS_RETRY_S)


async def run(settings: Settings, *, host: str, port: int) -> None:
    """Serve until cancelled (`loraswarm serve model-server --host --port`)."""
    provider = configure_tracing(SERVICE, settings.tracing)
    server = await asyncio.to_thread(ModelServer.load, settings)
    server.start()
    http = Server(
        uvicorn.Config(
            create_app(server),
            host=host,
            port=port or settings.model_server.port,
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s / 2)),
        )
    )
    events = asyncio.create_task(consume_events(settings, server))
    log.info("model server on %s:%d: %s on %s", host, http.config.port, server.model_id, server.device.name)
    try:
        await serve_until_cancelled(http)
    finally:
        events.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await events
        server.stop()
        provider.shutdown()
