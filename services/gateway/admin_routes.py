"""The gateway's admin HTTP API: tenants, their users and API keys, with the admin key.

The operations of `loraswarm tenants` (services/gateway/tenant_admin.py), for an operator who
reaches the gateway but not its files. Authentication: `Authorization: Bearer <admin key>`
(LORASWARM_GATEWAY__ADMIN_API_KEY). Errors have the API's own shape, `{"detail": "..."}`:
401 no or unknown key, 403 a tenant's key or the admin API switched off, 404 no such tenant or
key, 409 already exists, 422 an invalid tenant or user id.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import asdict
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Depends, HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from loraswarm.services.gateway import tenant_admin
from loraswarm.services.gateway.http_api import Gw
from loraswarm.services.gateway.tenant_admin import TenantAdminError
from loraswarm.shared.metrics import REQUESTS_REFUSED
from loraswarm.shared.vectorstore import VectorStoreError

_bearer = HTTPBearer(auto_error=False, description="The admin API key (LORASWARM_GATEWAY__ADMIN_API_KEY).")
_STATUS = {"invalid": 422, "not_found": 404, "exists": 409}


async def admin(
    gw: Gw, bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None
) -> None:
    """Passes with the admin key; 401 without a known key, 403 with a tenant's key or no admin key set."""
    configured = gw.config.admin_api_key
    token = bearer.credentials if bearer else None
    if configured is None:
        REQUESTS_REFUSED.labels("gateway", "forbidden").inc()
        raise HTTPException(403, "the admin API is off: set LORASWARM_GATEWAY__ADMIN_API_KEY")
    if not token:
        REQUESTS_REFUSED.labels("gateway", "unauthorized").inc()
        raise HTTPException(
            401,
            "missing admin key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if secrets.compare_digest(token.encode(), configured.get_secret_value().encode()):
        return
    if gw.access.tenant_for_key(token) is not None:
        REQUESTS_REFUSED.labels("gateway", "forbidden").inc()
        raise HTTPException(403, "a tenant's API key cannot administer tenants: use the admin key")
    REQUESTS_REFUSED.labels("gateway", "unauthorized").inc()
    raise HTTPException(401, "unknown admin key", headers={"WWW-Authenticate": "Bearer"})


router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(admin)])


class NewTenant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str = Field(description="a-z, 0-9, '_' and '-', 1-63 characters.")
    display_name: str = Field(default="", max_length=200)
    description: str = Field(default="", max_length=2000, description="What the company does.")


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128)


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="default", min_length=1, max_length=100, description="To revoke it by name.")
    user_id: str | None = Field(default=None, description="Bind the key to one user of the tenant.")


def _refuse(exc: TenantAdminError | VectorStoreError) -> NoReturn:
    if isinstance(exc, VectorStoreError):
        raise HTTPException(503, f"the document store is unavailable: {exc}") from exc
    raise HTTPException(_STATUS[exc.problem], str(exc)) from exc


async def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """The file (and Weaviate) work off the event loop; its refusals as HTTP errors."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except (TenantAdminError, VectorStoreError) as exc:
        _refuse(exc)


@router.get("/tenants", summary="Every tenant")
async def list_tenants(gw: Gw) -> list[dict[str, Any]]:
    return [asdict(t) for t in await _run(tenant_admin.list_all, gw.settings)]


@router.post("/tenants", status_code=201, summary="Create a tenant with default specialists")
async def create_tenant(gw: Gw, body: NewTenant) -> dict[str, Any]:
    await _run(
        tenant_admin.create,
        gw.settings,
        body.tenant_id,
        display_name=body.display_name,
        description=body.description,
    )
    return asdict(await _run(tenant_admin.show, gw.settings, body.tenant_id))


@router.get("/tenants/{tenant_id}", summary="A tenant's configuration, users, key names and adapters")
async def show_tenant(gw: Gw, tenant_id: str) -> dict[str, Any]:
    return asdict(await _run(tenant_admin.show, gw.settings, tenant_id))


@router.post("/tenants/{tenant_id}/users", summary="Allow a user in the tenant")
async def add_user(gw: Gw, tenant_id: str, body: NewUser) -> dict[str, Any]:
    await _run(tenant_admin.add_user, gw.settings, tenant_id, body.user_id)
    return asdict(await _run(tenant_admin.show, gw.settings, tenant_id))


@router.post("/tenants/{tenant_id}/keys", status_code=201, summary="A new API key (shown once)")
async def create_key(gw: Gw, tenant_id: str, body: NewKey) -> dict[str, Any]:
    key = await _run(tenant_admin.create_key, gw.settings, tenant_id, body.name, body.user_id)
    return {"tenant_id": tenant_id, "name": body.name, "user_id": body.user_id, "key": key}


@router.delete("/tenants/{tenant_id}/keys/{name}", summary="Revoke a tenant's key by name")
async def revoke_key(gw: Gw, tenant_id: str, name: str) -> dict[str, Any]:
    removed = await _run(tenant_admin.revoke_key, gw.settings, tenant_id, name)
    return {"tenant_id": tenant_id, "name": name, "revoked": removed}


@router.delete("/tenants/{tenant_id}", summary="Delete everything a tenant has")
async def delete_tenant(gw: Gw, tenant_id: str, documents: bool = True) -> dict[str, Any]:
    removed = await _run(tenant_admin.delete, gw.settings, tenant_id, documents=documents)
    if not removed:
        raise HTTPException(404, f"no tenant {tenant_id!r}")
    return {"tenant_id": tenant_id, "deleted": removed}
