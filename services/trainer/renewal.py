"""Renewing served stacks when their company adapter is republished (shared/stacks.py).

A user's stack pins the company version the user adapter was gated on. When the company adapter
is published again, each dependent user adapter is trained again on the new version through an
ordinary `adapter.train.requested` (same name, method, hyper-parameters and data spec as its
current version): it passes the same gate, and only then does its stack move to the new pair.
Until then the old pair is served. A user adapter that was training when the company adapter was
republished (the renewal then finds it busy and is refused `already_training`) is gated on the old
version; its own `adapter.published` asks for it again. The requests' ids derive from the
published event, so a redelivered `adapter.published` asks for nothing twice (the trainer answers
a known request id with its earlier outcome).
"""

from __future__ import annotations

import zlib

from loraswarm.shared.adapter_store import AdapterError, AdapterManifest, AdapterStore, AdapterVersion
from loraswarm.shared.events import AdapterPublished, AdapterTrainRequested, TrainingData
from loraswarm.shared.ids import AdapterRef
from loraswarm.shared.stacks import is_stack
from loraswarm.shared.tenants import TenantConfig


def _hyperparameters(values: dict[str, object]) -> dict[str, float | int | str | bool | list[str]]:
    kept: dict[str, float | int | str | bool | list[str]] = {}
    for key, value in values.items():
        if isinstance(value, bool | int | float | str):
            kept[key] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            kept[key] = [str(v) for v in value]
    return kept


def _company_of(user: AdapterManifest, tenant_id: str, tenant: TenantConfig | None) -> str | None:
    """`<tenant>/<name>` of the company adapter a user adapter is trained on (its `stack_on`)."""
    stack_on = str(user.hyperparameters.get("stack_on", "auto"))
    if stack_on == "none":
        return None
    if stack_on == "auto":
        return (tenant.company_adapter if tenant else None) or f"{tenant_id}/company"
    return f"{tenant_id}/{stack_on}"


def _renewal(event: AdapterPublished, user: AdapterVersion) -> AdapterTrainRequested:
    m = user.manifest
    data = getattr(m, "data", None)
    return event.caused(
        AdapterTrainRequested,
        # One id per (published version, user adapter): a redelivery repeats, never adds.
        index=zlib.crc32(user.ref.name.encode()),
        user_id=m.user_id,
        name=user.ref.name,
        method="lora",
        base_model=m.base_model,
        hyperparameters=_hyperparameters(dict(m.hyperparameters)),
        data=TrainingData.model_validate(data) if isinstance(data, dict) else TrainingData(),
    )


def _behind(store: AdapterStore, user: AdapterVersion, tenant: TenantConfig | None) -> str | None:
    """The company adapter a LoRA user adapter should be on and is not (its current version is
    another than the one the user adapter was gated on); None when it is up to date."""
    m = user.manifest
    if m.user_id is None or m.method != "lora" or is_stack(m):
        return None
    company = _company_of(m, user.ref.tenant_id, tenant)
    if company is None:
        return None
    try:
        current = store.resolve(company)
    except AdapterError:
        return None  # no company adapter (any more): nothing to be on
    return None if getattr(m, "stacked_on", None) == current.ref.id else company


def renewal_requests(
    event: AdapterPublished, store: AdapterStore, tenant: TenantConfig | None
) -> list[AdapterTrainRequested]:
    """The training requests that bring user stacks onto the current company adapter after `event`:
    - a company adapter's current version published: each LoRA user adapter of the tenant trained
      on it (`stack_on` auto, or its name) and gated on an older version;
    - a user adapter published that was gated on a company version no longer current (it was
      training when the company adapter was republished, so that event's renewal found it busy):
      that user adapter again.
    Empty for a stack, an event of a version no longer current (a late redelivery), or an adapter
    nobody stacks on."""
    ref = AdapterRef.parse(event.adapter_id)
    try:
        published = store.resolve(f"{ref.tenant_id}/{ref.name}@{event.version}")
    except AdapterError:
        return []
    if is_stack(published.manifest) or store.current(ref.tenant_id, ref.name) != event.version:
        return []
    if published.manifest.user_id is not None:
        return [_renewal(event, published)] if _behind(store, published, tenant) else []
    return [
        _renewal(event, user)
        for user in store.list(ref.tenant_id)
        if _behind(store, user, tenant) == published.ref.unversioned
    ]
