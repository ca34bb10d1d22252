"""200 concurrent POSTs: each is accepted (202) or refused (429), none is lost: every accepted
request reaches the planner once and ends completed or failed."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx

from loraswarm.shared.settings import Settings
from tests.gateway.conftest import Tenants, running_gateway, until
from tests.gateway.test_slack import FORM, enable_slack, signed, slash

N = 200


async def test_200_concurrent_posts_are_each_accepted_or_refused_and_none_is_lost(
    settings: Settings, tenants: Tenants
) -> None:
    # Room for most of the burst, not all of it: both answers must show up.
    tenants.set("acme", rate_limit={"per_s": 20, "burst": 120})
    tenants.set("globex", rate_limit={"per_s": 5, "burst": 30})
    limits = httpx.Limits(max_connections=N, max_keepalive_connections=N)
    async with (
        running_gateway(settings) as gateway,
        httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits) as client,
    ):

        async def post(i: int) -> httpx.Response:
            tenant = "acme" if i % 2 else "globex"
            question = f"fail {i}" if i % 5 == 0 else f"question {i}"
            return await client.post(
                "/v1/recommendations", json={"question": question}, headers=tenants.headers(tenant)
            )

        started = time.perf_counter()
        responses = await asyncio.gather(*(post(i) for i in range(N)))
        took = time.perf_counter() - started
        codes = Counter(r.status_code for r in responses)
        assert set(codes) <= {202, 429}, codes
        assert codes[202] > 0 and codes[429] > 0, codes
        for refused in (r for r in responses if r.status_code == 429):
            assert int(refused.headers["retry-after"]) >= 1
        accepted = {
            r.json()["request_id"]: ("acme" if i % 2 else "globex")
            for i, r in enumerate(responses)
            if r.status_code == 202
        }
        assert len(accepted) == codes[202]

        await until(lambda: len(gateway.seen) >= len(accepted), timeout_s=60, what="every request published")
        outcomes: dict[str, str] = {}

        async def settle(request_id: str, headers: dict[str, str]) -> None:
            while True:
                got = (await client.get(f"/v1/recommendations/{request_id}", headers=headers)).json()
                if got["status"] != "pending":
                    outcomes[request_id] = got["status"]
                    return
                await asyncio.sleep(0.1)

        await asyncio.wait_for(
            asyncio.gather(*(settle(rid, tenants.headers(tenant)) for rid, tenant in accepted.items())),
            timeout=120,
        )
        await asyncio.sleep(0.3)
    published = Counter(str(e.request_id) for e in gateway.seen)
    assert set(published) == set(accepted), "published requests differ from the accepted ones"
    assert max(published.values()) == 1, "a request was published twice"
    assert set(outcomes.values()) == {"completed", "failed"}
    print(f"{settings.broker}: {dict(codes)} in {took:.2f} s; outcomes {Counter(outcomes.values())}")


async def test_100_concurrent_slash_commands_are_each_acknowledged_and_none_is_lost(
    settings: Settings, tenants: Tenants
) -> None:
    enable_slack(settings, "https://hooks.slack.com/")
    tenants.set("acme", rate_limit={"per_s": 10, "burst": 60})
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with (
        running_gateway(settings) as gateway,
        httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits) as client,
    ):

        async def command(i: int) -> tuple[float, httpx.Response]:
            body = slash(f"question {i}", f"https://hooks.slack.com/commands/T/{i}/x")
            started = time.perf_counter()
            answer = await client.post("/slack/commands", content=body, headers={**FORM, **signed(body)})
            return time.perf_counter() - started, answer

        results = await asyncio.gather(*(command(i) for i in range(100)))
        assert {answer.status_code for _, answer in results} == {200}
        taken = [a.json()["text"] for _, a in results if "Working on it" in a.json()["text"]]
        told = [a for _, a in results if "Too many questions" in a.json()["text"]]
        assert len(taken) + len(told) == 100 and taken and told
        await until(lambda: len(gateway.seen) >= len(taken), what="every acknowledged command published")
        await asyncio.sleep(0.3)
    assert len(gateway.seen) == len(taken)
    assert {f"`{r.request_id}`" for r in gateway.seen} == {t.split("(request ")[1].rstrip(")") for t in taken}
    took = sorted(t for t, _ in results)
    print(
        f"{settings.broker}: Slack acks p50 {took[49] * 1000:.0f} ms, max {took[-1] * 1000:.0f} ms (Slack allows 3000)"
    )
