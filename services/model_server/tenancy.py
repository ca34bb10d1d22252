"""Which tenant a request acts for, and which adapters it may therefore use.

Two modes, chosen by whether keys are configured:

- Keys set. Every inference request carries `Authorization: Bearer <key>`. A tenant key
  (`LORASWARM_MODEL_SERVER__API_KEYS`, `{"<key>": "<tenant>"}`) acts for its one tenant. A
  service key (`LORASWARM_MODEL_SERVER__SERVICE_KEYS`, `{"<key>": ["acme", "globex"]}` or
  `["*"]`) is what the swarm's specialists and planner send: it names the tenants it may serve,
  and a request picks one of them with `X-Tenant-Id` (none: the base model only). An
  `X-Tenant-Id` the key may not serve is refused (403).
- No keys (embedded default, a trusted network behind the gateway): the tenant is the
  `X-Tenant-Id` header (`InferenceClient(headers=...)`, `OpenAI(default_headers=...)`).

A request may name several adapters, applied together (`acme/company+acme/user-7`); every one
must belong to the request's tenant. The base model needs no tenant. A request that names an
adapter without a tenant, or another tenant's adapter, is refused before the store is read, so
the answer reveals nothing about other tenants' adapters.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from loraswarm.services.model_server.errors import AdapterForbidden, AdapterMissing, Unauthorized
from loraswarm.shared.adapter_store import AdapterNotFound, parse_adapter_id
from loraswarm.shared.ids import is_tenant_id
from loraswarm.shared.settings import ModelServerSettings

TENANT_HEADER = "x-tenant-id"
STACK_SEPARATOR = "+"


def tenant_of(headers: Mapping[str, str], settings: ModelServerSettings) -> str | None:
    """The request's tenant (`None`: base model only); `Unauthorized` for a missing or unknown key."""
    claimed = headers.get(TENANT_HEADER) or None
    if claimed is not None and not is_tenant_id(claimed):
        raise Unauthorized(f"{TENANT_HEADER} {claimed!r} is not a tenant id")
    if not settings.api_keys and not settings.service_keys:
        return claimed
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("this server needs an API key: send `Authorization: Bearer <key>`")
    tenants = serves(token.strip(), settings)
    if tenants is None:
        raise Unauthorized("unknown API key")
    if claimed is None:
        # A tenant key means its tenant; a service key without a tenant means the base model.
        return tenants[0] if token.strip() in settings.api_keys else None
    if "*" not in tenants and claimed not in tenants:
        raise AdapterForbidden(f"{TENANT_HEADER} {claimed!r} is not a tenant this key may serve")
    return claimed


def serves(token: str, settings: ModelServerSettings) -> list[str] | None:
    """The tenants a key may act for (`*`: any), or None for an unknown key."""
    found = None
    # Compare every key in constant time, so timing does not tell how much of a key matched.
    for key, tenant in settings.api_keys.items():
        if hmac.compare_digest(key.encode(), token.encode()):
            found = [tenant]
    for key, tenants in settings.service_keys.items():
        if hmac.compare_digest(key.encode(), token.encode()):
            found = list(tenants)
    return found


def adapter_stack(adapter_id: str | None, tenant: str | None, *, max_adapters: int) -> tuple[str, ...]:
    """The adapters a request names, checked against its tenant. Empty: the base model."""
    if not adapter_id:
        return ()
    ids = tuple(part.strip() for part in adapter_id.split(STACK_SEPARATOR))
    if len(ids) > max_adapters:
        raise AdapterForbidden(
            f"at most {max_adapters} adapters may be stacked in one request; got {len(ids)}"
        )
    for one in ids:
        try:
            ref = parse_adapter_id(one)
        except AdapterNotFound as exc:
            raise AdapterMissing(str(exc)) from exc
        if tenant is None:
            raise AdapterForbidden(
                f"adapter {one!r} needs the request's tenant: send the `{TENANT_HEADER}` header "
                "(or an API key, when the server has them)"
            )
        if ref.tenant_id != tenant:
            raise AdapterForbidden(f"adapter {one!r} does not belong to tenant {tenant!r}")
    return ids
