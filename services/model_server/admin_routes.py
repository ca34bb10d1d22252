"""`/admin/adapters`: load (or reload) an adapter now, see what is resident, drop one from memory.

Loading through this route or the `adapter.published` event is only a warm-up and a check:
requests resolve the current version from the store on every use, so a new version is served
as soon as it is published, loaded or not. A malformed adapter is refused here with 422
`invalid_adapter` and the reason, and the server goes on serving everything else.

Guarded by `Authorization: Bearer <LORASWARM_MODEL_SERVER__ADMIN_API_KEY>`. Without an admin key
the routes answer only connections that arrive on a loopback address — a server bound to
127.0.0.1, or a caller on its own host — and refuse every other with 401: a model server
reachable on a network never has open admin routes.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress

from fastapi import APIRouter, Request
from pydantic import BaseModel

from loraswarm.services.model_server.adapters import LoadedAdapter
from loraswarm.services.model_server.errors import AdapterMissing, Unauthorized
from loraswarm.services.model_server.server import ModelServer
from loraswarm.shared.adapter_store import AdapterNotFound, parse_adapter_id


class LoadAdapter(BaseModel):
    adapter_id: str


class AdapterInfo(BaseModel):
    adapter_id: str
    rank: int
    modules: int
    bytes: int
    load_ms: float


def require_admin(server: ModelServer, request: Request) -> None:
    """The admin key's check (or, without one, the loopback rule) of every admin route."""
    key = server.limits.admin_api_key
    if key is None:
        if _loopback(request):
            return
        raise Unauthorized(
            "the admin routes need an admin key when reached over the network: set "
            "LORASWARM_MODEL_SERVER__ADMIN_API_KEY and send `Authorization: Bearer <admin key>`"
        )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.get_secret_value().encode()):
        raise Unauthorized("the admin routes need `Authorization: Bearer <admin key>`")


def admin_router(server: ModelServer) -> APIRouter:
    router = APIRouter(prefix="/admin")

    def authorize(request: Request) -> None:
        require_admin(server, request)

    @router.post("/adapters")
    async def load(body: LoadAdapter, request: Request) -> AdapterInfo:
        authorize(request)
        (adapter,) = await asyncio.to_thread(server.load_adapters, (body.adapter_id,))
        return _info(adapter)

    @router.get("/adapters")
    async def resident(request: Request) -> dict[str, object]:
        authorize(request)
        registry = server.registry
        stats = registry.stats
        return {
            "resident": [_info(a).model_dump() for a in registry.resident()],
            "resident_bytes": registry.resident_bytes(),
            "max_resident": registry.max_resident,
            "max_bytes": registry.max_bytes,
            "loads": stats.loads,
            "hits": stats.hits,
            "evictions": stats.evictions,
            "failures": stats.failures,
            "errors": dict(registry.last_errors),
        }

    @router.delete("/adapters/{tenant_id}/{name}")
    async def unload(tenant_id: str, name: str, request: Request) -> dict[str, int]:
        authorize(request)
        try:
            ref = parse_adapter_id(f"{tenant_id}/{name}")
        except AdapterNotFound as exc:
            raise AdapterMissing(str(exc)) from exc
        return {"unloaded": server.registry.unload(ref.tenant_id, ref.name)}

    return router


def _loopback(request: Request) -> bool:
    """Whether the connection arrived on a loopback address (its local end, not a header)."""
    local = request.scope.get("server")
    if not local:
        return False
    try:
        return ipaddress.ip_address(str(local[0])).is_loopback
    except ValueError:
        return False


def _info(adapter: LoadedAdapter) -> AdapterInfo:
    return AdapterInfo(
        adapter_id=adapter.id,
        rank=adapter.rank,
        modules=len(adapter.weights),
        bytes=adapter.nbytes,
        load_ms=round(adapter.load_ms, 3),
    )
