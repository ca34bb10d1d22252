"""The tenant HTTP API over a real server and the real bus (in-process and Kafka)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable

from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import DocumentsSubmitted, RecommendationCompleted, RecommendationRequested
from loraswarm.shared.settings import Settings
from tests.gateway.conftest import Tenants, completed_for, running_gateway, until


def collect_documents(into: list[DocumentsSubmitted]) -> Callable[[EventBus], None]:
    def subscribe(bus: EventBus) -> None:
        @bus.consumer(DocumentsSubmitted, group="test-ingestion")
        async def on_documents(event: DocumentsSubmitted) -> None:
            into.append(event)

    return subscribe


async def test_a_request_is_accepted_published_and_answered(settings: Settings, tenants: Tenants) -> None:
    tenants.set("acme", service_keys_act_for_users=True)  # a backend that authenticates its users
    async with running_gateway(settings) as gateway:
        seen = gateway.seen
        response = await gateway.client.post(
            "/v1/recommendations",
            json={"question": "Can I refund order 42?", "user_id": "u-7"},
            headers=tenants.headers("acme"),
        )
        assert response.status_code == 202, response.text
        accepted = response.json()
        request_id = accepted["request_id"]
        assert response.headers["location"] == f"/v1/recommendations/{request_id}"
        await until(lambda: len(seen) == 1, what="request published")
        assert seen[0].tenant_id == "acme"
        assert str(seen[0].request_id) == request_id
        assert seen[0].user_id == "u-7"
        assert seen[0].reply_to is not None and seen[0].reply_to.kind == "http"

        async def status() -> str:
            got = await gateway.client.get(accepted["status_url"], headers=tenants.headers("acme"))
            assert got.status_code == 200
            return str(got.json()["status"])

        for _ in range(500):
            if await status() != "pending":
                break
            await asyncio.sleep(0.02)
        result = (await gateway.client.get(accepted["status_url"], headers=tenants.headers("acme"))).json()
        assert result["status"] == "completed"
        assert result["completed"]["recommendations"][0]["citations"][0]["doc_id"] == "policy-1"
        assert result["failed"] is None


async def test_the_progress_stream_ends_with_the_outcome(settings: Settings, tenants: Tenants) -> None:
    release = asyncio.Event()

    async def answer_later(event: RecommendationRequested) -> RecommendationCompleted:
        await release.wait()
        return completed_for(event)

    async with running_gateway(settings, planner=answer_later) as gateway:
        accepted = (
            await gateway.client.post(
                "/v1/recommendations", json={"question": "stream me"}, headers=tenants.headers("acme")
            )
        ).json()
        events: list[tuple[str, str]] = []
        async with gateway.client.stream(
            "GET", accepted["events_url"], headers=tenants.headers("acme")
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            name = ""
            async for line in _with_release(lines, release):
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((name, line.removeprefix("data: ")))
    assert [name for name, _ in events] == ["accepted", "completed"]
    final = json.loads(events[-1][1])
    assert final["status"] == "completed"
    assert final["request_id"] == accepted["request_id"]


async def _with_release(lines: AsyncIterator[str], release: asyncio.Event) -> AsyncIterator[str]:
    """Let the planner answer only once the stream has shown the first step."""
    async for line in lines:
        yield line
        if line.startswith("data: "):
            release.set()


async def test_tenant_a_can_neither_read_nor_trigger_anything_of_tenant_b(
    settings: Settings, tenants: Tenants
) -> None:
    documents: list[DocumentsSubmitted] = []
    async with running_gateway(settings, also=collect_documents(documents)) as gateway:
        seen = gateway.seen
        a, b = tenants.headers("acme"), tenants.headers("globex")
        mine = (
            await gateway.client.post("/v1/recommendations", json={"question": "B's secret"}, headers=b)
        ).json()
        await until(lambda: len(seen) == 1)
        rid = mine["request_id"]
        paths = [
            f"/v1/recommendations/{rid}",
            f"/v1/recommendations/{rid}/events",
            f"/v1/recommendations/{rid}/deliveries",
        ]
        for path in paths:
            foreign = await gateway.client.get(path, headers=a)
            unknown = await gateway.client.get(path.replace(rid, str(uuid.uuid4())), headers=a)
            # Another tenant's request answers exactly like one that does not exist.
            assert (foreign.status_code, unknown.status_code) == (404, 404), path
            assert foreign.json()["detail"] == f"no request {rid}"
        for path in (paths[0], paths[2]):
            assert (await gateway.client.get(path, headers=b)).status_code == 200

        # The tenant comes from the key; a body cannot name another one.
        for body in (
            {"question": "q", "tenant_id": "globex"},
            {"question": "q", "reply_to": {"kind": "http"}},
        ):
            refused = await gateway.client.post("/v1/recommendations", json=body, headers=a)
            assert refused.status_code == 422
        accepted = await gateway.client.post("/v1/recommendations", json={"question": "A's own"}, headers=a)
        assert accepted.status_code == 202
        doc = {"doc_id": "d1", "source": "upload", "content": "A's handbook"}
        assert (
            await gateway.client.post("/v1/documents", json={"documents": [doc]}, headers=a)
        ).status_code == 202
        for headers in ({}, {"Authorization": "Bearer lsk_not-a-key"}, {"X-API-Key": "nope"}):
            refused = await gateway.client.post(
                "/v1/recommendations", json={"question": "q"}, headers=headers
            )
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
        await until(lambda: len(seen) == 2 and len(documents) == 1)
        await asyncio.sleep(0.3)  # nothing else may arrive
    assert [e.tenant_id for e in seen] == ["globex", "acme"]
    assert [d.tenant_id for d in documents] == ["acme"]


async def test_requests_over_the_size_limit_are_refused_before_kafka(
    settings: Settings, tenants: Tenants
) -> None:
    settings.gateway.max_request_bytes = 2048
    settings.gateway.max_documents_bytes = 64 * 1024
    settings.kafka.max_message_bytes = 16 * 1024
    documents: list[DocumentsSubmitted] = []
    async with running_gateway(settings, also=collect_documents(documents)) as gateway:
        acme = tenants.headers("acme")
        big_question = {"question": "x" * 3000}
        declared = await gateway.client.post("/v1/recommendations", json=big_question, headers=acme)
        assert declared.status_code == 413
        assert "2048" in declared.json()["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the body is counted as read
            yield b'{"question": "'
            for _ in range(10):
                yield b"y" * 400
            yield b'"}'

        chunked = await gateway.client.post(
            "/v1/recommendations", content=chunks(), headers={**acme, "content-type": "application/json"}
        )
        assert chunked.status_code == 413
        huge_doc = {"doc_id": "d", "source": "upload", "content": "z" * 70_000}
        over_route = await gateway.client.post("/v1/documents", json={"documents": [huge_doc]}, headers=acme)
        assert over_route.status_code == 413
        # Under the route's limit, but the event would be over what Kafka consumers take.
        big_doc = {"doc_id": "d", "source": "upload", "content": "z" * 20_000}
        over_kafka = await gateway.client.post("/v1/documents", json={"documents": [big_doc]}, headers=acme)
        assert over_kafka.status_code == 413
        assert "Kafka" in over_kafka.json()["detail"]

        # Same tenant, same partition: had any refused one been published, it would come first.
        small = await gateway.client.post("/v1/recommendations", json={"question": "small"}, headers=acme)
        doc = {"doc_id": "ok", "source": "upload", "content": "fine"}
        assert (
            await gateway.client.post("/v1/documents", json={"documents": [doc]}, headers=acme)
        ).status_code == 202
        await until(lambda: len(gateway.seen) >= 1 and len(documents) >= 1)
        await asyncio.sleep(0.3)
    assert [str(e.request_id) for e in gateway.seen] == [small.json()["request_id"]]
    assert [d.documents[0].doc_id for d in documents] == ["ok"]


async def test_rate_limits_are_per_tenant_with_retry_after(settings: Settings, tenants: Tenants) -> None:
    tenants.set("acme", rate_limit={"per_s": 0.5, "burst": 3})
    async with running_gateway(settings, planner=None) as gateway:
        acme, globex = tenants.headers("acme"), tenants.headers("globex")
        codes = [
            (await gateway.client.post("/v1/recommendations", json={"question": f"q{i}"}, headers=acme))
            for i in range(5)
        ]
        assert [r.status_code for r in codes] == [202, 202, 202, 429, 429]
        assert 1 <= int(codes[3].headers["retry-after"]) <= 2
        # Another tenant has its own bucket.
        other = await gateway.client.post("/v1/recommendations", json={"question": "q"}, headers=globex)
        assert other.status_code == 202


async def test_an_idempotency_key_makes_retries_one_request(settings: Settings, tenants: Tenants) -> None:
    async with running_gateway(settings) as gateway:
        headers = {**tenants.headers("acme"), "Idempotency-Key": "order-42-refund"}
        # Retries racing each other, and one after: one request.
        tries = await asyncio.gather(
            *(
                gateway.client.post("/v1/recommendations", json={"question": "q"}, headers=headers)
                for _ in range(5)
            )
        )
        again = await gateway.client.post("/v1/recommendations", json={"question": "q"}, headers=headers)
        other_tenant = await gateway.client.post(
            "/v1/recommendations",
            json={"question": "q"},
            headers={**tenants.headers("globex"), "Idempotency-Key": "order-42-refund"},
        )
        assert {r.status_code for r in [*tries, again]} == {202}
        assert len({r.json()["request_id"] for r in [*tries, again]}) == 1
        assert again.json()["request_id"] != other_tenant.json()["request_id"]
        await until(lambda: len(gateway.seen) == 2)
        await asyncio.sleep(0.3)
    assert len(gateway.seen) == 2


async def test_openapi_docs_and_metrics_are_served(settings: Settings, tenants: Tenants) -> None:
    async with running_gateway(settings) as gateway:
        await gateway.client.post(
            "/v1/recommendations", json={"question": "q"}, headers=tenants.headers("acme")
        )
        spec = (await gateway.client.get("/openapi.json")).json()
        assert {
            "/v1/recommendations",
            "/v1/recommendations/{request_id}",
            "/v1/documents",
            "/slack/events",
        } <= set(spec["paths"])
        assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])
        assert "text/event-stream" in json.dumps(spec["paths"]["/v1/recommendations/{request_id}/events"])
        assert (await gateway.client.get("/docs")).status_code == 200
        metrics = (await gateway.client.get("/metrics")).text
    assert (
        'loraswarm_http_requests_total{method="POST",route="/v1/recommendations",service="gateway",status="202"}'
        in metrics
    )
    assert 'loraswarm_events_published_total{service="gateway",topic="recommendation.requested"}' in metrics
