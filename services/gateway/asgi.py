"""ASGI middleware of the gateway: body size limits, and a server span plus metrics per request.

Both are plain ASGI so that they also see streamed answers (server-sent events) and requests
that never reach a route (413, 404).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.trace import Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraswarm.shared.metrics import REQUESTS_REFUSED, observe_http
from loraswarm.shared.tracing import server_span

_BODY_METHODS = {"POST", "PUT", "PATCH"}


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Refuse a body over its route's limit with 413 before the app (and so Kafka) sees any of it.

    A declared `Content-Length` over the limit is refused unread; a chunked or lying body is
    read only up to the limit. The body is then handed to the app from memory.
    """

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str], int], service: str) -> None:
        self.app = app
        self.limit_for = limit_for
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                REQUESTS_REFUSED.labels(self.service, "bad_request").inc()
                await _refuse(send, 400, "Content-Length is not a number")
                return
            if too_big:
                await self._too_large(send, limit)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, limit: int) -> None:
        REQUESTS_REFUSED.labels(self.service, "too_large").inc()
        await _refuse(send, 413, f"request body is over this route's limit of {limit} bytes")


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/v1/recommendations/{request_id}`): low-cardinality.

    Starlette's router leaves the route in the scope once it has matched one.
    """
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


class HttpTelemetry:
    """A SERVER span (HTTP semantic conventions) and the HTTP metrics, for every request."""

    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        attributes: dict[str, Any] = {
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        if "user-agent" in headers:
            attributes["user_agent.original"] = headers["user-agent"]
        started = time.perf_counter()
        status = 500
        first_byte: float | None = None

        async def send_and_watch(message: Message) -> None:
            nonlocal status, first_byte
            if message["type"] == "http.response.start":
                status = int(message["status"])
                first_byte = time.perf_counter()
            await send(message)

        # Named `{method}` until routing tells the template (HTTP semantic conventions).
        with server_span(method, None, headers, attributes) as span:
            try:
                await self.app(scope, receive, send_and_watch)
            finally:
                route = route_template(scope)
                if route != "unmatched":
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                observe_http(
                    self.service, method, route, status, (first_byte or time.perf_counter()) - started
                )
