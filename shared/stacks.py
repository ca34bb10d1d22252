"""Served stacks: a user's adapter and the company adapter it was gated on, published as one.

A user adapter is trained and gated on top of one company version (services/trainer/pipeline.py
merges it in). Serving `company + user` by name would stack whatever company version is current,
a pair nobody checked once the company adapter is republished. So when a LoRA user adapter passes
the gate, the trainer also publishes the exact pair as one LoRA adapter (shared/lora_join.py: the
two joined along the rank axis) under the stable id `<tenant>/<user adapter name>.stack`, whose
manifest names both parts and their versions (`stack_of`). Engines that take one adapter per
request (vLLM, TGI) serve that id; the specialists send it for every engine.

- Pinned: the stack's `current` moves only when a new pair is published, so republishing the
  company adapter changes nothing a user is served until the renewed pair passes its gate.
- Renewed by events: the trainer answers a company adapter's `adapter.published` with a training
  request for each dependent user adapter (services/trainer/renewal.py); its new version, gated
  as any other, publishes the new pair.
- Rolled back together: `rollback_with_stacks` makes current, for each stack an adapter is part of,
  the newest pair gated with the version rolled back to, and withdraws a stack that has none (the
  specialists then answer with the company adapter alone).
- Deleted together: `delete_with_stacks` deletes the stacks an adapter is part of with it.

A user without a stack of their own (no user adapter yet, or a LLaMA-Adapter user adapter, which
does not join) is served as before: `served_candidates` says what to try, in order.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from loraswarm.shared.adapter_store import AdapterError, AdapterManifest, AdapterStore, AdapterVersion
from loraswarm.shared.lora_join import CONFIG, WEIGHTS, join
from loraswarm.shared.tenants import TenantConfig

log = logging.getLogger("loraswarm.stacks")

SUFFIX = ".stack"
STACK_SEPARATOR = "+"  # the model server's own stacking of several adapters in one request


class StackPart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str  # `<name>` within the tenant
    version: str

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


def stack_name(user_adapter_name: str) -> str:
    return user_adapter_name + SUFFIX


def is_stack(manifest: AdapterManifest) -> bool:
    return bool(getattr(manifest, "stack_of", None))


def parts_of(manifest: AdapterManifest) -> list[StackPart]:
    """The stack's parts, company first (empty for an adapter that is not a stack)."""
    return [StackPart.model_validate(p) for p in getattr(manifest, "stack_of", None) or []]


def served_candidates(tenant: TenantConfig, adapter_ids: list[str]) -> list[tuple[str | None, list[str]]]:
    """What an engine is asked for, in the order to try, for a task's logical adapter stack
    (`TenantConfig.adapters_for`: company first, then the user's): each entry is the id sent (None:
    the base model) and the adapters it stands for. A user's pair goes out as its published stack,
    then the company adapter alone (no stack yet), then the base model (no company adapter yet)."""
    chain: list[tuple[str | None, list[str]]] = []
    if len(adapter_ids) == 2:
        company, user = adapter_ids
        if tenant.user_adapter_method == "lora":
            chain.append((user + SUFFIX, adapter_ids))
        else:  # a LLaMA-Adapter does not join: only the project's model server stacks it as trained
            chain.append((company + STACK_SEPARATOR + user, adapter_ids))
        adapter_ids = [company]
    if adapter_ids:
        chain.append((STACK_SEPARATOR.join(adapter_ids), adapter_ids))
    chain.append((None, []))
    return chain


def publish_stack(
    store: AdapterStore, user: AdapterVersion, company: AdapterVersion | None
) -> AdapterVersion:
    """Publish the pair `company` + `user` (the company it was gated on; None: it sits on the base
    model alone) as the current version of the user's stack; the same pair again is not republished."""
    m = user.manifest
    parts = ([StackPart(name=company.ref.name, version=str(company.ref.version))] if company else []) + [
        StackPart(name=user.ref.name, version=str(user.ref.version))
    ]
    name = stack_name(user.ref.name)
    existing = _version_with(store, user.ref.tenant_id, name, parts)
    if existing is not None:
        if store.current(user.ref.tenant_id, name) != existing.ref.version:
            store.rollback(user.ref.tenant_id, name, str(existing.ref.version))
        return store.resolve(existing.ref.id)
    manifest = AdapterManifest(
        tenant_id=m.tenant_id,
        user_id=m.user_id,
        name=name,
        method="lora",
        base_model=m.base_model,
        base_model_hash=m.base_model_hash,
        data_fingerprint=m.data_fingerprint,
        metrics=dict(m.metrics),
        stack_of=[p.model_dump() for p in parts],
        request_event_id=getattr(m, "request_event_id", None),
    )
    with tempfile.TemporaryDirectory(prefix="stack-") as tmp:
        out = Path(tmp) / "joined"
        if company is None:
            out.mkdir()
            for file in (CONFIG, WEIGHTS):
                shutil.copy2(user.path / file, out / file)
        else:
            join(company.path, user.path, out)
        version = store.publish(out, manifest)
    log.info("published %s = %s", version.ref.id, " + ".join(p.label for p in parts))
    return version


def _version_with(
    store: AdapterStore, tenant: str, name: str, parts: list[StackPart]
) -> AdapterVersion | None:
    for v in reversed(store.versions(tenant, name)):
        try:
            version = store.resolve(f"{tenant}/{name}@{v}")
        except AdapterError:
            continue
        if parts_of(version.manifest) == parts:
            return version
    return None


def stacks_with(store: AdapterStore, tenant: str, part_name: str) -> list[str]:
    """The names of the tenant's stacks that have `part_name` as a part (in any version)."""
    found = []
    folder = store.root / tenant
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(SUFFIX)) if folder.is_dir() else []
    for name in names:
        for v in store.versions(tenant, name):
            try:
                parts = parts_of(store.resolve(f"{tenant}/{name}@{v}").manifest)
            except AdapterError:
                continue
            if any(p.name == part_name for p in parts):
                found.append(name)
                break
    return found


def rollback_with_stacks(
    store: AdapterStore, tenant: str, name: str, to: str | None = None
) -> tuple[str, dict[str, str | None]]:
    """Roll an adapter back and the stacks it is a part of with it: (its version now, and for each
    stack the version now current: the newest pair gated with that version, or None where there is
    none and the stack is withdrawn, so that its user is served the company adapter alone)."""
    version = store.rollback(tenant, name, to)
    wanted = StackPart(name=name, version=version)
    moved: dict[str, str | None] = {}
    for stack in stacks_with(store, tenant, name):
        newest = next(
            (
                v
                for v in reversed(store.versions(tenant, stack))
                if wanted in parts_of(store.resolve(f"{tenant}/{stack}@{v}").manifest)
            ),
            None,
        )
        if newest is None:
            store.withdraw(tenant, stack)
            log.warning("%s/%s: no pair was gated with %s; withdrawn", tenant, stack, wanted.label)
        else:
            store.rollback(tenant, stack, newest)
        moved[stack] = newest
    return version, moved


def delete_with_stacks(store: AdapterStore, tenant: str, name: str) -> list[str] | None:
    """Delete an adapter and every stack it is a part of (a stack holds its parts' weights: a
    deleted user adapter, or company adapter, must not go on being served inside one). The
    stacks deleted; None when the adapter does not exist."""
    stacks = stacks_with(store, tenant, name)
    if not store.delete(tenant, name):
        return None
    for stack in stacks:
        store.delete(tenant, stack)
        log.info("%s/%s deleted with its part %s", tenant, stack, name)
    return stacks
