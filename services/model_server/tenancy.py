"""Which tenant a request acts for, and which adapters it may therefore use.

Two modes, chosen by `LORASWARM_MODEL_SERVER__API_KEYS`:

- API keys set (`{"<key>": "<tenant>"}`): every inference request carries
  `Authorization: Bearer <key>` (the `api_key` of `InferenceClient` and of the `openai` client);
  the key decides the tenant. An `X-Tenant-Id` header, if also sent, must name the same tenant.
- No API keys (embedded default, trusted network behind the gateway): the tenant is the
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
    if not settings.api_keys:
        return claimed
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("this server needs an API key: send `Authorization: Bearer <key>`")
    tenant = _tenant_of_key(token.strip(), settings.api_keys)
    if tenant is None:
        raise Unauthorized("unknown API key")
    if claimed is not None and claimed != tenant:
        raise AdapterForbidden(f"{TENANT_HEADER} {claimed!r} does not match the API key's tenant")
    return tenant


def _tenant_of_key(token: str, keys: Mapping[str, str]) -> str | None:
    found = None
    for key, tenant in keys.items():
        # compare every key in constant time, so timing does not tell how much of a key matched
        if hmac.compare_digest(key.encode(), token.encode()):
            found = tenant
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
