"""Gateway test fixtures: tenants, keys, a real HTTP server on a free port, and HTTP receivers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loraswarm.services.gateway.access import hash_api_key, new_api_key
from loraswarm.services.gateway.app import build
from loraswarm.services.gateway.parts import Gateway
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import RecommendationCompleted, RecommendationFailed, RecommendationRequested
from loraswarm.shared.http_server import Server
from loraswarm.shared.settings import Settings

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@dataclass
class Tenants:
    """Two tenants with one API key each, written where the gateway reads them."""

    settings: Settings
    keys: dict[str, str] = field(default_factory=dict)
    access: dict[str, Any] = field(default_factory=dict)

    def write_access(self) -> None:
        path = self.settings.data_dir / "gateway" / "access.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"tenants": self.access}))

    def set(self, tenant: str, **entries: Any) -> None:
        self.access[tenant].update(entries)
        self.write_access()

    def headers(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}


def write_tenant_config(folder: Path, tenant: str, slack_team_ids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "tenant_id": tenant,
        "slack_team_ids": slack_team_ids,
        "slack_users": {"U42": "u-42"},  # the Slack user U42 is the tenant's user u-42
        "specialists": [{"name": "support", "description": "Support policy", "instructions": "Answer."}],
    }
    (folder / f"{tenant}.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture
def tenants(settings: Settings) -> Tenants:
    return make_tenants(settings)


def make_tenants(settings: Settings) -> Tenants:
    settings.orchestration.tenants_dir = settings.data_dir / "tenants"
    settings.gateway.slack_signing_secret = None
    found = Tenants(settings)
    for tenant, team in (("acme", "TACME"), ("globex", "TGLOBEX")):
        key = new_api_key()
        found.keys[tenant] = key
        found.access[tenant] = {"api_keys": [{"name": "test", "sha256": hash_api_key(key)}]}
        write_tenant_config(settings.orchestration.tenants_dir, tenant, [team])
    found.write_access()
    return found


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app on a free local port; yields its base URL."""
    # A long keep-alive: a client reusing a connection the server is just closing gets ReadError.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="off", log_level="warning", timeout_keep_alive=120
    )
    server = Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


Answer = Callable[[RecommendationRequested], Awaitable[RecommendationCompleted | RecommendationFailed | None]]


def completed_for(event: RecommendationRequested) -> RecommendationCompleted:
    return event.caused(
        RecommendationCompleted,
        summary=f"About: {event.question}",
        recommendations=[
            {
                "title": "Refund within 30 days",
                "text": "Refund the order; the policy allows it.",
                "citations": [
                    {"doc_id": "policy-1", "source": "https://acme.example/policy", "title": "Refund policy"}
                ],
            }
        ],
    )


async def default_answer(event: RecommendationRequested) -> RecommendationCompleted | RecommendationFailed:
    if event.question.startswith("fail"):
        return event.caused(RecommendationFailed, reason="no specialist could answer", code="internal")
    return completed_for(event)


def add_stub_planner(bus: EventBus, answer: Answer, seen: list[RecommendationRequested]) -> None:
    """Plays the planner (being built elsewhere): answers each request with its outcome."""

    @bus.consumer(RecommendationRequested, group="stub-planner")
    async def on_request(event: RecommendationRequested) -> None:
        seen.append(event)
        outcome = await answer(event)
        if outcome is not None:
            await bus.publish(outcome)


@dataclass
class RunningGateway:
    gw: Gateway
    url: str
    client: httpx.AsyncClient
    seen: list[RecommendationRequested]
    side: EventBus


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings,
    *,
    planner: Answer | None = default_answer,
    also: Callable[[EventBus], None] | None = None,
) -> AsyncIterator[RunningGateway]:
    """The gateway on a real HTTP server, plus the other side of the bus: a stub planner and
    whatever `also` subscribes. With the in-process broker they share the gateway's bus (that
    broker lives in one bus); with Kafka they run on a bus of their own, as another service would.
    """
    gw, app = build(settings)
    side = gw.bus if settings.broker == "memory" else EventBus(settings, service="test-side")
    seen: list[RecommendationRequested] = []
    if planner is not None:
        add_stub_planner(side, planner, seen)
    if also is not None:
        also(side)
    async with contextlib.AsyncExitStack() as stack:
        if side is not gw.bus:
            await stack.enter_async_context(side)
        await stack.enter_async_context(gw)
        url = await stack.enter_async_context(serve(app))
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
        yield RunningGateway(gw, url, client, seen, side)


@dataclass
class Receiver:
    """A local HTTP endpoint that records what it got and answers from a script of status codes."""

    script: list[int] = field(default_factory=list)
    default_status: int = 200
    calls: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    json_answer: dict[str, Any] | None = None
    check: Callable[[dict[str, str], bytes], bool] | None = None

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        status = self.script.pop(0) if self.script else self.default_status
        if self.check is not None and not self.check(headers, body):
            status = 401
        self.calls.append((headers, body, status))
        if self.json_answer is not None:
            return JSONResponse(self.json_answer, status_code=status)
        return Response(status_code=status)

    def accepted(self) -> list[tuple[dict[str, str], bytes, int]]:
        return [c for c in self.calls if 200 <= c[2] < 300]


@contextlib.asynccontextmanager
async def receiver(rec: Receiver, path: str = "/hook") -> AsyncIterator[str]:
    app = Starlette(routes=[Route(path, rec.endpoint, methods=["POST"])])
    async with serve(app) as url:
        yield url + path


async def until(check: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met in {timeout_s} s")
        await asyncio.sleep(0.02)
