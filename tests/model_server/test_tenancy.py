"""Service auth at the model server, as properties over random tenants and keys, and on the real
server: a key serves only the tenants it names, no request uses another tenant's adapter, and
the admin routes are open only to loopback connections when no admin key is set.

(A user's adapter is `<tenant>/user-<id>`: which user's a request may use is decided upstream,
from the authenticated user — tests/gateway/test_auth.py — and the model server holds every
request to its tenant's adapters.)
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from loraswarm.services.model_server.admin_routes import _loopback
from loraswarm.services.model_server.errors import AdapterForbidden, Unauthorized
from loraswarm.services.model_server.tenancy import adapter_stack, tenant_of
from loraswarm.shared.settings import ModelServerSettings
from tests.model_server.conftest import Served

TENANTS = st.lists(st.text("abcxyz", min_size=1, max_size=3), min_size=1, max_size=4, unique=True)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[ModelServerSettings, dict[str, set[str]]]:
    tenants = draw(TENANTS)
    may: dict[str, set[str]] = {}
    api_keys: dict[str, str] = {}
    service_keys: dict[str, list[str]] = {}
    for i, tenant in enumerate(tenants):
        api_keys[f"tenant-key-{i}"] = tenant
        may[f"tenant-key-{i}"] = {tenant}
    for j in range(draw(st.integers(0, 3))):
        served = draw(st.one_of(st.just(["*"]), st.lists(st.sampled_from(tenants), unique=True)))
        service_keys[f"service-key-{j}"] = served
        may[f"service-key-{j}"] = set(tenants) if served == ["*"] else set(served)
    return ModelServerSettings(api_keys=api_keys, service_keys=service_keys), may


@given(world=worlds(), data=st.data())
def test_a_key_acts_only_for_tenants_it_names_and_never_with_another_tenants_adapter(
    world: tuple[ModelServerSettings, dict[str, set[str]]], data: st.DataObject
) -> None:
    settings, may = world
    tenants = sorted({t for served in may.values() for t in served} | set(settings.api_keys.values()))
    key = data.draw(st.sampled_from([*may, "unknown-key", ""]))
    claimed = data.draw(st.sampled_from([None, *tenants]))
    stack = data.draw(st.lists(st.sampled_from(tenants), max_size=3))
    adapter_id = "+".join(f"{t}/user-{i}" for i, t in enumerate(stack)) or None
    headers = {"x-tenant-id": claimed} if claimed else {}
    if key:
        headers["authorization"] = f"Bearer {key}"

    if key not in may:
        with pytest.raises(Unauthorized):
            tenant_of(headers, settings)
        return
    if claimed is not None and claimed not in may[key]:
        with pytest.raises(AdapterForbidden):
            tenant_of(headers, settings)
        return
    tenant = tenant_of(headers, settings)
    assert tenant is None or tenant in may[key]
    if adapter_id and (tenant is None or any(t != tenant for t in stack)):
        with pytest.raises(AdapterForbidden):
            adapter_stack(adapter_id, tenant, max_adapters=4)
        return
    # What is served: only adapters of a tenant this key may serve.
    for one in adapter_stack(adapter_id, tenant, max_adapters=4):
        assert one.split("/")[0] == tenant and tenant in may[key]


def test_a_service_key_serves_the_tenants_it_names_on_the_real_server(served: Served) -> None:
    limits = served.server.limits
    saved = (limits.api_keys, limits.service_keys)
    limits.api_keys, limits.service_keys = {}, {"swarm-key": ["acme"]}
    body = {
        "inputs": "Our support hours are",
        "parameters": {"max_new_tokens": 2, "adapter_id": "acme/support"},
    }
    try:
        with httpx.Client(base_url=served.url, timeout=120) as http:
            ok = http.post(
                "/generate", json=body, headers={"Authorization": "Bearer swarm-key", "X-Tenant-Id": "acme"}
            )
            assert ok.status_code == 200, ok.text
            # The tenant header alone (the old trusted-network way) is refused once keys are set.
            refused = http.post("/generate", json=body, headers={"X-Tenant-Id": "acme"})
            assert refused.status_code == 401
            other = http.post(
                "/generate", json=body, headers={"Authorization": "Bearer swarm-key", "X-Tenant-Id": "globex"}
            )
            assert other.status_code == 403
            # No admin key, a loopback connection: open (local use).
            assert http.get("/admin/adapters").status_code == 200
    finally:
        limits.api_keys, limits.service_keys = saved


@pytest.mark.parametrize(
    ("local", "open_"), [("127.0.0.1", True), ("::1", True), ("10.1.2.3", False), ("0.0.0.0", False)]
)
def test_without_an_admin_key_only_loopback_connections_reach_the_admin_routes(
    local: str, open_: bool
) -> None:
    request = Request(
        {"type": "http", "method": "GET", "path": "/admin/adapters", "headers": [], "server": (local, 3000)}
    )
    assert _loopback(request) is open_
