"""Sending what the outbox holds: tenant webhooks, Slack `response_url` replies, Slack messages.

The outbox is the `deliveries` table (store.py): a delivery is queued in the same step that
records a request's outcome, and `DeliveryDispatcher` sends what is due, in the background, so
a slow or dead receiver never holds up the Kafka consumer. A failed attempt is retried after an
exponential back-off with jitter (Retry-After is honoured when longer); a webhook endpoint that
answers 410 Gone is disabled; each attempt is logged. Queued deliveries survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
from opentelemetry import context, propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from loraswarm.services.gateway.access import AccessDirectory
from loraswarm.services.gateway.store import Delivery, DeliveryStatus, GatewayStore
from loraswarm.services.gateway.webhook_signing import signed_headers
from loraswarm.shared.metrics import DELIVERIES
from loraswarm.shared.settings import GatewaySettings
from loraswarm.shared.tracing import tracer

log = logging.getLogger("loraswarm.gateway.deliveries")

# Slack Web API errors that no retry can fix.
_SLACK_PERMANENT = {
    "channel_not_found",
    "not_in_channel",
    "invalid_auth",
    "account_inactive",
    "token_revoked",
    "is_archived",
    "msg_too_long",
    "invalid_blocks",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to, and what to do next."""

    status: DeliveryStatus | None  # None: try again later
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Pause after the `attempt`-th failure: exponential, with "equal jitter".

    Half of the exponential step is kept and half is random, so receivers that went down
    together are not hit again together, yet no retry comes back immediately.
    """
    ceiling = min(cap_s, base_s * 2.0 ** (attempt - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class DeliveryDispatcher:
    def __init__(
        self,
        store: GatewayStore,
        access: AccessDirectory,
        settings: GatewaySettings,
        client: httpx.AsyncClient,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.access = access
        self.settings = settings
        self.client = client
        self.rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}

    def wake(self) -> None:
        """Something was queued: look now instead of at the next timer."""
        self._wake.set()

    async def run(self) -> None:
        """Send due deliveries until cancelled."""
        try:
            while True:
                self._wake.clear()  # before looking: a wake-up from here on is not lost
                self._start_due()
                next_due = self.store.next_due_at()
                wait = 1.0 if next_due is None else min(1.0, max(0.02, next_due - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
        finally:
            for task in self._in_flight.values():
                task.cancel()
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    def _start_due(self) -> None:
        free = self.settings.webhook_concurrency - len(self._in_flight)
        if free <= 0:
            return
        for delivery in self.store.due_deliveries(time.time(), free, set(self._in_flight)):
            task = asyncio.create_task(self._deliver(delivery))
            self._in_flight[delivery.webhook_id] = task
            task.add_done_callback(functools.partial(self._done, delivery.webhook_id))

    def _done(self, key: str, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(key, None)
        self._wake.set()

    async def _deliver(self, delivery: Delivery) -> None:
        started = time.perf_counter()
        token = context.attach(propagate.extract(delivery.trace))
        try:
            with tracer().start_as_current_span(
                f"deliver {delivery.kind}",
                kind=SpanKind.CLIENT,
                attributes={
                    "loraswarm.request_id": delivery.request_id,
                    "loraswarm.tenant_id": delivery.tenant_id,
                    "loraswarm.delivery.kind": delivery.kind,
                    "loraswarm.delivery.attempt": delivery.attempts + 1,
                    "webhook.id": delivery.webhook_id,
                },
            ) as span:
                try:
                    outcome = await self._attempt(delivery)
                except Exception as exc:  # a bug here must not kill the dispatcher
                    log.exception("delivery %s crashed", delivery.webhook_id)
                    outcome = Outcome(None, error=f"{type(exc).__name__}: {exc}")
                if outcome.status_code is not None:
                    span.set_attribute("http.response.status_code", outcome.status_code)
                if outcome.status != "delivered":
                    span.set_status(Status(StatusCode.ERROR, outcome.error or "not delivered"))
        finally:
            context.detach(token)
        self._record(delivery, outcome, (time.perf_counter() - started) * 1000)

    def _record(self, delivery: Delivery, outcome: Outcome, duration_ms: float) -> None:
        attempt = delivery.attempts + 1
        status = outcome.status
        next_at = time.time()
        if status is None:
            if attempt >= self.settings.webhook_max_attempts:
                status = "failed"
            else:
                status = "pending"
                pause = backoff_s(
                    attempt, self.settings.webhook_backoff_s, self.settings.webhook_backoff_max_s, self.rng
                )
                next_at += max(pause, min(outcome.retry_after_s or 0.0, self.settings.webhook_backoff_max_s))
        self.store.record_attempt(
            delivery,
            status_code=outcome.status_code,
            error=outcome.error,
            duration_ms=duration_ms,
            new_status=status,
            next_attempt_at=next_at,
        )
        if status == "disabled" and delivery.kind == "webhook":
            self.store.disable_endpoint(delivery.tenant_id, delivery.target, outcome.error or "410 Gone")
            log.warning("webhook %s of %s answered 410 Gone: disabled", delivery.target, delivery.tenant_id)
        DELIVERIES.labels(delivery.kind, "retry" if status == "pending" else status).inc()

    async def _attempt(self, delivery: Delivery) -> Outcome:
        if delivery.kind == "webhook":
            return await self._webhook(delivery)
        if delivery.kind == "slack_response_url":
            return await self._slack_response_url(delivery)
        return await self._slack_message(delivery)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response | Outcome:
        try:
            return await self.client.post(
                url, content=body, headers=headers, timeout=self.settings.webhook_timeout_s
            )
        except httpx.HTTPError as exc:
            return Outcome(None, error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    async def _webhook(self, delivery: Delivery) -> Outcome:
        if self.store.endpoint_disabled(delivery.tenant_id, delivery.target):
            return Outcome("disabled", error="endpoint disabled after 410 Gone")
        access = self.access.get(delivery.tenant_id)
        endpoint = next((w for w in (access.webhooks if access else []) if w.url == delivery.target), None)
        if endpoint is None:
            return Outcome("failed", error="endpoint no longer in the access file")
        body = delivery.payload.encode()
        headers = signed_headers(endpoint.secrets, delivery.webhook_id, int(time.time()), body)
        headers["user-agent"] = "loraswarm-gateway"
        response = await self._post(delivery.target, body, headers)
        if isinstance(response, Outcome):
            return response
        code = response.status_code
        if 200 <= code < 300:
            return Outcome("delivered", code)
        if code == 410:
            return Outcome("disabled", code, error="410 Gone: the receiver asked to stop")
        return Outcome(None, code, error=f"HTTP {code}", retry_after_s=_retry_after(response))

    async def _slack_response_url(self, delivery: Delivery) -> Outcome:
        body = delivery.payload.encode()
        response = await self._post(delivery.target, body, {"content-type": "application/json"})
        if isinstance(response, Outcome):
            return response
        code = response.status_code
        if 200 <= code < 300:
            return Outcome("delivered", code)
        if code in (404, 410):
            return Outcome("failed", code, error="response_url expired or unknown")
        return Outcome(None, code, error=f"HTTP {code}", retry_after_s=_retry_after(response))

    async def _slack_message(self, delivery: Delivery) -> Outcome:
        access = self.access.get(delivery.tenant_id)
        token = access.slack_bot_token if access else None
        if token is None:
            return Outcome("failed", error="no slack_bot_token for this tenant in the access file")
        response = await self._post(
            self.settings.slack_api_url.rstrip("/") + "/chat.postMessage",
            delivery.payload.encode(),
            {
                "content-type": "application/json; charset=utf-8",
                "authorization": f"Bearer {token.get_secret_value()}",
            },
        )
        if isinstance(response, Outcome):
            return response
        code = response.status_code
        answer: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            answer = response.json()
        if code == 200 and answer.get("ok") is True:
            return Outcome("delivered", code)
        error = str(answer.get("error") or f"HTTP {code}")
        if error in _SLACK_PERMANENT:
            return Outcome("failed", code, error=error)
        return Outcome(None, code, error=error, retry_after_s=_retry_after(response))
