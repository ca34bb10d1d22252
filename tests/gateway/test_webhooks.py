"""Outbound webhooks: signed per Standard Webhooks v1 and verified on the receiving side with the
`standardwebhooks` library; retried with back-off; delivered once per request and endpoint; 410
disables the endpoint."""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest
from standardwebhooks import Webhook

from loraswarm.services.gateway.access import AccessFileError, new_webhook_secret, parse_access, secret_bytes
from loraswarm.services.gateway.deliveries import backoff_s
from loraswarm.services.gateway.webhook_signing import message_id, sign
from loraswarm.shared.events import RecommendationFailed
from loraswarm.shared.settings import Settings
from tests.gateway.conftest import Receiver, Tenants, completed_for, receiver, running_gateway, until


def fast_retries(settings: Settings) -> None:
    settings.gateway.webhook_backoff_s = 0.05
    settings.gateway.webhook_backoff_max_s = 0.2


def test_signatures_verify_with_the_standardwebhooks_library() -> None:
    old, new = new_webhook_secret(), new_webhook_secret()
    body = b'{"type":"recommendation.completed","data":{}}'
    msg_id = message_id("r1", "webhook", "https://example.com/hook")
    timestamp = int(time.time())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign([new, old], msg_id, timestamp, body),
    }
    # During a rotation, a receiver with either secret accepts the message.
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(new_webhook_secret()).verify(body, headers)
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(new).verify(body + b" ", headers)


def test_webhook_secrets_must_be_whsec_with_24_to_64_bytes() -> None:
    assert len(secret_bytes(new_webhook_secret())) == 32
    for bad in ("plain-secret", "whsec_c2hvcnQ=", "whsec_%%%"):
        with pytest.raises(ValueError, match="secret"):
            secret_bytes(bad)
    with pytest.raises(AccessFileError, match="whsec_"):
        parse_access(
            json.dumps({"tenants": {"acme": {"webhooks": [{"url": "https://x", "secrets": ["nope"]}]}}})
        )


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(60.0, 1.0 * 2 ** (attempt - 1))
        pauses = [backoff_s(attempt, 1.0, 60.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= p <= ceiling for p in pauses)
        assert max(pauses) - min(pauses) > ceiling / 4  # jittered, not one fixed value


async def test_a_receiver_failing_twice_then_succeeding_gets_the_event_once(
    settings: Settings, tenants: Tenants
) -> None:
    fast_retries(settings)
    old, new = new_webhook_secret(), new_webhook_secret()
    hook = Receiver(script=[500, 503])
    async with receiver(hook) as url:
        tenants.set("acme", webhooks=[{"url": url, "secrets": [new, old]}])
        async with running_gateway(settings) as gateway:
            accepted = await gateway.client.post(
                "/v1/recommendations", json={"question": "refund?"}, headers=tenants.headers("acme")
            )
            request_id = accepted.json()["request_id"]
            await until(lambda: len(hook.accepted()) == 1, what="a successful delivery")
            # The same outcome again (a redelivery) and a contradicting late one: no new delivery.
            [request] = gateway.seen
            await gateway.side.publish(completed_for(request))
            await gateway.side.publish(request.caused(RecommendationFailed, reason="late", code="deadline"))
            await asyncio.sleep(1.0)
            log = (
                await gateway.client.get(
                    f"/v1/recommendations/{request_id}/deliveries", headers=tenants.headers("acme")
                )
            ).json()
    assert [status for _, _, status in hook.calls] == [500, 503, 200]
    ids = {headers["webhook-id"] for headers, _, _ in hook.calls}
    assert len(ids) == 1, "every attempt must carry the same webhook-id"
    for headers, body, _ in hook.calls:
        for secret in (old, new):
            payload = Webhook(secret).verify(body, headers)
            assert payload["type"] == "recommendation.completed"
            assert payload["data"]["request_id"] == request_id
            assert payload["data"]["tenant_id"] == "acme"
    [delivery] = log
    assert delivery["webhook_id"] == ids.pop()
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 200]


async def test_410_disables_the_endpoint(settings: Settings, tenants: Tenants) -> None:
    fast_retries(settings)
    gone, alive = Receiver(default_status=410), Receiver()
    async with receiver(gone) as gone_url, receiver(alive) as alive_url:
        secret = new_webhook_secret()
        tenants.set(
            "acme",
            webhooks=[{"url": gone_url, "secrets": [secret]}, {"url": alive_url, "secrets": [secret]}],
        )
        async with running_gateway(settings) as gateway:
            acme = tenants.headers("acme")
            first = (
                await gateway.client.post("/v1/recommendations", json={"question": "one"}, headers=acme)
            ).json()
            await until(lambda: len(alive.calls) == 1 and len(gone.calls) == 1)
            await until(
                lambda: gateway.gw.store.endpoint_disabled("acme", gone_url), what="endpoint disabled"
            )
            second = (
                await gateway.client.post("/v1/recommendations", json={"question": "fail two"}, headers=acme)
            ).json()
            await until(lambda: len(alive.calls) == 2)
            await asyncio.sleep(0.5)
            logs = [
                (
                    await gateway.client.get(
                        f"/v1/recommendations/{r['request_id']}/deliveries", headers=acme
                    )
                ).json()
                for r in (first, second)
            ]
    assert len(gone.calls) == 1, "a disabled endpoint got another delivery"
    assert {d["target"]: d["status"] for d in logs[0]} == {gone_url: "disabled", alive_url: "delivered"}
    assert {d["target"]: d["status"] for d in logs[1]} == {alive_url: "delivered"}
    assert json.loads(alive.calls[1][1])["type"] == "recommendation.failed"


async def test_a_delivery_gives_up_after_its_attempts(settings: Settings, tenants: Tenants) -> None:
    fast_retries(settings)
    settings.gateway.webhook_max_attempts = 3
    down = Receiver(default_status=502)
    async with receiver(down) as url:
        tenants.set("acme", webhooks=[{"url": url, "secrets": [new_webhook_secret()]}])
        async with running_gateway(settings) as gateway:
            acme = tenants.headers("acme")
            rid = (
                await gateway.client.post("/v1/recommendations", json={"question": "q"}, headers=acme)
            ).json()["request_id"]

            def failed() -> bool:
                return [d.status for d in gateway.gw.store.deliveries_for(rid)] == ["failed"]

            await until(failed, what="delivery marked failed")
            await asyncio.sleep(0.5)
    assert len(down.calls) == 3
