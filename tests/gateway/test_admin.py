"""The gateway's admin HTTP API: tenants, users and keys with the admin key; errors in the API's shape."""

from __future__ import annotations

import uuid

import pytest
from pydantic import SecretStr

from loraswarm.shared.settings import Settings
from loraswarm.shared.tenants import load_tenant_file
from tests.gateway.conftest import Tenants, running_gateway

ADMIN = "adm_" + uuid.uuid4().hex


@pytest.fixture
def settings(tmp_path: object) -> Settings:  # the admin API needs no broker of its own: memory only
    from pathlib import Path

    from tests.conftest import isolated_settings

    assert isinstance(tmp_path, Path)
    return isolated_settings("memory", tmp_path)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_only_the_admin_key_administers(settings: Settings, tenants: Tenants) -> None:
    async with running_gateway(settings, planner=None) as g:
        off = await g.client.get("/v1/admin/tenants", headers=bearer(ADMIN))
        assert off.status_code == 403 and "LORASWARM_GATEWAY__ADMIN_API_KEY" in off.json()["detail"]
        settings.gateway.admin_api_key = SecretStr(ADMIN)
        missing = await g.client.get("/v1/admin/tenants")
        assert missing.status_code == 401 and "detail" in missing.json()
        wrong = await g.client.get("/v1/admin/tenants", headers=bearer("adm_wrong"))
        assert wrong.status_code == 401
        tenant_key = await g.client.get("/v1/admin/tenants", headers=tenants.headers("acme"))
        assert tenant_key.status_code == 403 and "tenant" in tenant_key.json()["detail"]
        listed = await g.client.get("/v1/admin/tenants", headers=bearer(ADMIN))
        assert listed.status_code == 200
        assert {t["tenant_id"] for t in listed.json()} == {"acme", "globex"}


async def test_a_tenant_from_creation_to_deletion(settings: Settings, tenants: Tenants) -> None:
    settings.gateway.admin_api_key = SecretStr(ADMIN)
    admin = bearer(ADMIN)
    async with running_gateway(settings, planner=None) as g:
        body = {"tenant_id": "northwind", "description": "Ships kitchen equipment."}
        created = await g.client.post("/v1/admin/tenants", json=body, headers=admin)
        assert created.status_code == 201, created.text
        assert created.json()["specialists"] == ["knowledge", "colleague"]
        config = load_tenant_file(settings.orchestration.tenants_dir / "northwind.yaml")
        assert "kitchen equipment" in config.specialists[0].description

        again = await g.client.post("/v1/admin/tenants", json=body, headers=admin)
        assert again.status_code == 409 and "exists" in again.json()["detail"]
        bad = await g.client.post("/v1/admin/tenants", json={"tenant_id": "Bad Name"}, headers=admin)
        assert bad.status_code == 422 and "tenant_id must be" in bad.json()["detail"]
        unknown = await g.client.get("/v1/admin/tenants/nobody", headers=admin)
        assert unknown.status_code == 404 and "loraswarm tenants create nobody" in unknown.json()["detail"]

        user = await g.client.post(
            "/v1/admin/tenants/northwind/users", json={"user_id": "ana"}, headers=admin
        )
        assert user.status_code == 200 and user.json()["users"] == ["ana"]
        stranger = await g.client.post(
            "/v1/admin/tenants/northwind/keys", json={"name": "bo", "user_id": "bo"}, headers=admin
        )
        assert stranger.status_code == 422 and "add-user" in stranger.json()["detail"]
        made = await g.client.post(
            "/v1/admin/tenants/northwind/keys", json={"name": "ana", "user_id": "ana"}, headers=admin
        )
        assert made.status_code == 201
        key = made.json()["key"]
        # The new key is a working tenant key at once (the gateway re-reads the access file) ...
        probe = f"/v1/recommendations/{uuid.uuid4()}"
        assert (await g.client.get(probe, headers=bearer(key))).status_code == 404
        shown = (await g.client.get("/v1/admin/tenants/northwind", headers=admin)).json()
        assert shown["keys"] == [{"name": "ana", "user_id": "ana"}] and key not in str(shown)
        # ... and a revoked one stops working at once.
        revoked = await g.client.delete("/v1/admin/tenants/northwind/keys/ana", headers=admin)
        assert revoked.status_code == 200
        assert (await g.client.get(probe, headers=bearer(key))).status_code == 401
        gone = await g.client.delete("/v1/admin/tenants/northwind/keys/ana", headers=admin)
        assert gone.status_code == 404

        deleted = await g.client.delete("/v1/admin/tenants/northwind?documents=false", headers=admin)
        assert deleted.status_code == 200 and "configuration" in deleted.json()["deleted"]
        assert (await g.client.get("/v1/admin/tenants/northwind", headers=admin)).status_code == 404
        assert (
            await g.client.delete("/v1/admin/tenants/northwind?documents=false", headers=admin)
        ).status_code == 404
