"""Renewing served stacks when their company adapter is republished (shared/stacks.py).

A user's stack pins the company version the user adapter was gated on. When the company adapter
is published again, each dependent user adapter is trained again on the new version through an
ordinary `adapter.train.requested` (same name, method, hyper-parameters and data spec as its
current version): it passes the same gate, and only then does its stack move to the new pair.
Until then the old pair is served. The requests' ids derive from the published event, so a
redelivered `adapter.published` asks for nothing twice (the trainer answers a known request id
with its earlier outcome).
"""

from __future__ import annotations

import zlib

from loraswarm.shared.adapter_store import AdapterError, AdapterStore
from loraswarm.shared.events import AdapterPublished, AdapterTrainRequested, TrainingData
from loraswarm.shared.ids import AdapterRef
from loraswarm.shared.stacks import SUFFIX, is_stack, parts_of
from loraswarm.shared.tenants import TenantConfig


def _hyperparameters(values: dict[str, object]) -> dict[str, float | int | str | bool | list[str]]:
    kept: dict[str, float | int | str | bool | list[str]] = {}
    for key, value in values.items():
        if isinstance(value, bool | int | float | str):
            kept[key] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            kept[key] = [str(v) for v in value]
    return kept


def renewal_requests(
    event: AdapterPublished, store: AdapterStore, tenant: TenantConfig | None
) -> list[AdapterTrainRequested]:
    """The training requests that renew every stack a company adapter's new version leaves behind:
    each user stack of the tenant not yet on this version whose user adapter stacks on this company
    adapter (`stack_on` auto, or this name). Empty for a user adapter, a stack, or another adapter."""
    ref = AdapterRef.parse(event.adapter_id)
    try:
        published = store.resolve(f"{ref.tenant_id}/{ref.name}@{event.version}")
    except AdapterError:
        return []
    company_name = (tenant.company_adapter if tenant else None) or f"{ref.tenant_id}/company"
    if published.manifest.user_id is not None or is_stack(published.manifest):
        return []
    auto = f"{ref.tenant_id}/{ref.name}" == company_name
    requests = []
    for stack in store.list(ref.tenant_id):
        parts = parts_of(stack.manifest)
        if not parts or (len(parts) == 2 and parts[0].version == event.version and parts[0].name == ref.name):
            continue
        user_name = stack.ref.name.removesuffix(SUFFIX)
        try:
            user = store.resolve(f"{ref.tenant_id}/{user_name}")
        except AdapterError:
            continue
        m = user.manifest
        stack_on = str(m.hyperparameters.get("stack_on", "auto"))
        if (
            m.user_id is None
            or m.method != "lora"
            or not (stack_on == ref.name or (stack_on == "auto" and auto))
        ):
            continue
        data = getattr(m, "data", None)
        requests.append(
            event.caused(
                AdapterTrainRequested,
                # One id per (published version, user adapter): a redelivery repeats, never adds.
                index=zlib.crc32(user_name.encode()),
                user_id=m.user_id,
                name=user_name,
                method="lora",
                base_model=m.base_model,
                hyperparameters=_hyperparameters(dict(m.hyperparameters)),
                data=TrainingData.model_validate(data) if isinstance(data, dict) else TrainingData(),
            )
        )
    return requests
