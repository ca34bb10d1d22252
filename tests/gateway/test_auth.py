"""Who a gateway request acts for, as properties over random tenants, users and credentials.

The gateway runs for real (HTTP server, the in-process bus, a stub planner that answers) in a
thread of its own; hypothesis draws a world — tenants, their users, whether a tenant lets its
service key act for users — and writes its access file with fresh keys and per-tenant JWT
secrets. Then every credential asks as every user and reads every request. What must hold:

- a request runs as the credential's own user (user key, JWT), or as the user a service key
  names only where its tenant allows it — so no request reaches another user's private chunks
  or adapter (the retriever and the planner's adapter stack take `user_id` from the event);
- a request is readable (status, events) only by its own user, or a service key allowed to act
  for users; anyone else gets the 404 of an unknown id;
- every refusal is a 401 or 403 with the API's error shape (`{"detail": "..."}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from loraswarm.services.gateway.access import hash_api_key, new_api_key
from loraswarm.shared.settings import Settings
from tests.conftest import isolated_settings
from tests.gateway.conftest import RunningGateway, running_gateway, write_tenant_config

NAMES = st.text("abcdefghij", min_size=1, max_size=4)


@dataclass
class Live:
    url: str
    settings: Settings
    gateway: RunningGateway


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    settings = isolated_settings("memory", tmp_path_factory.mktemp("auth"))
    settings.orchestration.tenants_dir = settings.data_dir / "tenants"
    settings.gateway.slack_signing_secret = None
    ready = threading.Event()
    stop: asyncio.Event | None = None
    box: dict[str, Any] = {}

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with running_gateway(settings) as gateway:
            box["live"] = Live(gateway.url, settings, gateway)
            ready.set()
            await stop.wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(60), "the gateway did not start"
    yield box["live"]
    assert stop is not None
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)


@dataclass(frozen=True)
class Credential:
    tenant: str
    user: str | None  # None: the tenant's service key
    token: str
    kind: str


def world_of(draw: Any) -> dict[str, tuple[list[str], bool]]:
    tenants = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    return {
        f"t{t}": (draw(st.lists(NAMES, min_size=1, max_size=3, unique=True)), draw(st.booleans()))
        for t in tenants
    }


@contextlib.contextmanager
def installed(live: Live, world: dict[str, tuple[list[str], bool]]) -> Iterator[list[Credential]]:
    """The world's access file and tenant configurations; its credentials (fresh every time)."""
    access: dict[str, Any] = {}
    creds: list[Credential] = []
    for tenant, (users, acts) in world.items():
        write_tenant_config(live.settings.orchestration.tenants_dir, tenant, [])
        secret = f"hs256-secret-of-{tenant}-{time.time_ns()}-padding-to-32-bytes"
        service = new_api_key()
        keys = [{"name": "service", "sha256": hash_api_key(service)}]
        creds.append(Credential(tenant, None, service, "service_key"))
        for user in users:
            key = new_api_key()
            keys.append({"name": user, "sha256": hash_api_key(key), "user_id": user})
            creds.append(Credential(tenant, user, key, "user_key"))
            claims = {
                "iss": f"https://idp/{tenant}",
                "aud": "loraswarm",
                "sub": user,
                "exp": time.time() + 600,
            }
            creds.append(Credential(tenant, user, jwt.encode(claims, secret, algorithm="HS256"), "jwt"))
        access[tenant] = {
            "api_keys": keys,
            "service_keys_act_for_users": acts,
            "jwt": {
                "issuer": f"https://idp/{tenant}",
                "audience": "loraswarm",
                "keys": [secret],
                "algorithms": ["HS256"],
            },
        }
    path = live.settings.data_dir / "gateway" / "access.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"tenants": access}))
    live.gateway.gw.access.refresh()
    yield creds


def refused_in_shape(response: httpx.Response, *codes: int) -> None:
    assert response.status_code in codes, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"]


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_credential_acts_for_or_reads_another_user(live: Live, data: st.DataObject) -> None:
    world = world_of(data.draw)
    with installed(live, world) as creds, httpx.Client(base_url=live.url, timeout=30) as client:
        targets: list[str | None] = [None] + [u for users, _ in world.values() for u in users]
        made: list[tuple[str, str, str | None]] = []  # (request id, tenant, user it runs as)
        for cred in creds:
            acts = world[cred.tenant][1]
            target = data.draw(
                st.sampled_from(targets), label=f"{cred.kind} of {cred.tenant}/{cred.user} asks as"
            )
            before = len(live.gateway.seen)
            got = client.post(
                "/v1/recommendations",
                json={"question": "What is mine?", "user_id": target},
                headers={"Authorization": f"Bearer {cred.token}"},
            )
            runs_as: str | None
            if cred.user is not None:
                allowed, runs_as = target in (None, cred.user), cred.user
            else:
                allowed, runs_as = target is None or acts, target
            if not allowed:
                refused_in_shape(got, 403)
                continue
            assert got.status_code == 202, got.text
            request_id = got.json()["request_id"]
            deadline = time.monotonic() + 10
            while len(live.gateway.seen) == before and time.monotonic() < deadline:
                time.sleep(0.01)
            [event] = [e for e in live.gateway.seen if str(e.request_id) == request_id]
            # The event is what retrieval and the adapter stack read: the caller's own user only.
            assert event.tenant_id == cred.tenant and event.user_id == runs_as
            made.append((request_id, cred.tenant, runs_as))

        for request_id, tenant, owner in made:
            for cred in creds:
                may = cred.tenant == tenant and (
                    owner == cred.user if cred.user is not None else owner is None or world[tenant][1]
                )
                auth = {"Authorization": f"Bearer {cred.token}"}
                status = client.get(f"/v1/recommendations/{request_id}", headers=auth)
                events = client.get(f"/v1/recommendations/{request_id}/events", headers=auth)
                if may:
                    assert status.status_code == 200 and events.status_code == 200, (status.text, events.text)
                else:
                    refused_in_shape(status, 404)
                    refused_in_shape(events, 404)

        # Credentials that prove nothing: 401, in the same shape.
        forged = jwt.encode(
            {
                "iss": f"https://idp/{next(iter(world))}",
                "aud": "loraswarm",
                "sub": "x",
                "exp": time.time() + 60,
            },
            "not-the-tenants-secret-but-long-enough",
            algorithm="HS256",
        )
        some_id = made[0][0] if made else str(uuid.uuid4())
        for token in (forged, "lsk_" + "x" * 43, "a.b.c"):
            auth = {"Authorization": f"Bearer {token}"}
            refused_in_shape(client.get(f"/v1/recommendations/{some_id}", headers=auth), 401)


def test_a_user_key_writes_only_its_own_private_documents(live: Live, tmp_path: Path) -> None:
    world = {"tdocs": (["ann", "bea"], False)}
    with installed(live, world) as creds, httpx.Client(base_url=live.url, timeout=30) as client:
        ann = next(c for c in creds if c.user == "ann" and c.kind == "user_key")
        service = next(c for c in creds if c.user is None)

        def submit(cred: Credential, visibility: str) -> httpx.Response:
            doc = {"doc_id": "d", "source": "s", "content": "x", "visibility": visibility}
            return client.post(
                "/v1/documents", json={"documents": [doc]}, headers={"Authorization": f"Bearer {cred.token}"}
            )

        assert submit(ann, "user:ann").status_code == 202
        refused_in_shape(submit(ann, "user:bea"), 403)
        refused_in_shape(submit(ann, "company"), 403)
        assert submit(service, "company").status_code == 202
        refused_in_shape(submit(service, "user:bea"), 403)  # this tenant does not let it act for users
