"""A tenant's life cycle: create, list, show, add a user, API keys, delete — one set of functions.

`loraswarm tenants ...` and the gateway's admin HTTP API (`admin_routes.py`) both call these, so
the two cannot drift. A tenant is its configuration file (`shared/tenants.py`), its entry in the
gateway's access file (`access.py`), its adapters and canaries, its trainer files and its
document shard; `delete` removes all of them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import TypeAdapter, ValidationError

from loraswarm.services.gateway.access import (
    AccessFileError,
    access_file,
    add_api_key,
    parse_access,
    remove_tenant,
    revoke_api_keys,
)
from loraswarm.shared.adapter_store import AdapterStore
from loraswarm.shared.canaries import CanaryStore
from loraswarm.shared.envelope import TenantId
from loraswarm.shared.events import UserId
from loraswarm.shared.settings import Settings
from loraswarm.shared.tenants import (
    TenantConfig,
    TenantConfigError,
    load_tenant_file,
    starter_tenant,
    write_tenant_file,
)

Problem = Literal["invalid", "not_found", "exists"]


class TenantAdminError(Exception):
    """An operation that cannot be done as asked; `problem` maps to the API's status code."""

    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass
class TenantSummary:
    tenant_id: str
    configured: bool  # has a configuration file (else it runs on defaults)
    display_name: str = ""
    users: list[str] | None = None
    specialists: list[str] = field(default_factory=list)
    keys: list[dict[str, str | None]] = field(default_factory=list)  # name, user_id (never the key)
    adapters: list[str] = field(default_factory=list)


def check_tenant_id(tenant_id: str) -> str:
    try:
        return TypeAdapter(TenantId).validate_python(tenant_id)
    except ValidationError as exc:
        raise TenantAdminError("invalid", exc.errors()[0]["msg"].removeprefix("Value error, ")) from exc


def check_user_id(user_id: str) -> str:
    try:
        return TypeAdapter(UserId).validate_python(user_id)
    except ValidationError as exc:
        raise TenantAdminError("invalid", f"user id {user_id!r}: {exc.errors()[0]['msg']}") from exc


def config_path(settings: Settings, tenant_id: str) -> Path:
    return settings.orchestration.tenants_dir / f"{tenant_id}.yaml"


def _config(settings: Settings, tenant_id: str) -> TenantConfig | None:
    path = config_path(settings, tenant_id)
    if not path.exists():
        return None
    try:
        return load_tenant_file(path)
    except TenantConfigError as exc:
        raise TenantAdminError("invalid", f"{exc} (fix or delete the file)") from exc


def _access(settings: Settings) -> dict[str, list[dict[str, str | None]]]:
    path = access_file(settings)
    if not path.exists():
        return {}
    try:
        parsed = parse_access(path.read_text(), source=str(path))
    except AccessFileError as exc:
        raise TenantAdminError("invalid", str(exc)) from exc
    return {
        t: [{"name": k.name, "user_id": k.user_id} for k in access.api_keys]
        for t, access in parsed.tenants.items()
    }


def create(
    settings: Settings,
    tenant_id: str,
    *,
    display_name: str = "",
    description: str = "",
    replace: bool = False,
) -> Path:
    """Write a working configuration for a new tenant; refuses to overwrite one unless `replace`."""
    check_tenant_id(tenant_id)
    path = config_path(settings, tenant_id)
    if path.exists() and not replace:
        raise TenantAdminError(
            "exists", f"tenant {tenant_id!r} exists ({path}); edit the file, or delete it first"
        )
    return write_tenant_file(path.parent, starter_tenant(tenant_id, display_name, description))


def show(settings: Settings, tenant_id: str) -> TenantSummary:
    check_tenant_id(tenant_id)
    config = _config(settings, tenant_id)
    keys = _access(settings).get(tenant_id)
    adapters = sorted(
        {f"{v.ref.tenant_id}/{v.ref.name}" for v in AdapterStore.under(settings.data_dir).list(tenant_id)}
    )
    if config is None and keys is None and not adapters:
        raise TenantAdminError(
            "not_found", f"no tenant {tenant_id!r}: `loraswarm tenants create {tenant_id}`"
        )
    return TenantSummary(
        tenant_id=tenant_id,
        configured=config is not None,
        display_name=config.display_name if config else "",
        users=config.users if config else None,
        specialists=[s.name for s in config.specialists] if config else [],
        keys=keys or [],
        adapters=adapters,
    )


def list_all(settings: Settings) -> list[TenantSummary]:
    """Every tenant that has a configuration file, an access entry or an adapter."""
    folder = settings.orchestration.tenants_dir
    names = {p.stem for p in folder.glob("*.yaml")} if folder.is_dir() else set()
    names |= set(_access(settings))
    names |= {v.ref.tenant_id for v in AdapterStore.under(settings.data_dir).list()}
    return [show(settings, name) for name in sorted(names)]


def add_user(settings: Settings, tenant_id: str, user_id: str) -> TenantConfig:
    """Allow `user_id` in the tenant (its `users` list; a tenant without one allows anybody)."""
    check_tenant_id(tenant_id)
    check_user_id(user_id)
    config = _config(settings, tenant_id)
    if config is None:
        raise TenantAdminError(
            "not_found", f"tenant {tenant_id!r} has no configuration: `loraswarm tenants create {tenant_id}`"
        )
    users = list(config.users or [])
    if user_id not in users:
        users.append(user_id)
    updated = config.model_copy(update={"users": users})
    write_tenant_file(settings.orchestration.tenants_dir, TenantConfig.model_validate(updated.model_dump()))
    return updated


def create_key(settings: Settings, tenant_id: str, name: str, user_id: str | None = None) -> str:
    """A new gateway API key for the tenant (for one user, if given); returned once, kept hashed."""
    check_tenant_id(tenant_id)
    if user_id is not None:
        check_user_id(user_id)
        config = _config(settings, tenant_id)
        if config is not None and not config.allows_user(user_id):
            raise TenantAdminError(
                "invalid",
                f"user {user_id!r} is not a user of {tenant_id!r}: `loraswarm tenants add-user {tenant_id} {user_id}`",
            )
    if any(k["name"] == name for k in _access(settings).get(tenant_id, [])):
        raise TenantAdminError(
            "exists", f"tenant {tenant_id!r} has a key named {name!r}: revoke it or pick another name"
        )
    return add_api_key(access_file(settings), tenant_id, name, user_id)


def revoke_key(settings: Settings, tenant_id: str, name: str) -> int:
    check_tenant_id(tenant_id)
    removed = revoke_api_keys(access_file(settings), tenant_id, name)
    if not removed:
        raise TenantAdminError("not_found", f"tenant {tenant_id!r} has no key named {name!r}")
    return removed


def _remove_tree(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    shutil.rmtree(folder)
    return True


def delete_data(settings: Settings, tenant_id: str, *, documents: bool) -> list[str]:
    """What the tenant trained and stored: adapters, canaries, trainer files and (with `documents`)
    its document shard; its configuration and keys stay. Returns what was there to delete."""
    check_tenant_id(tenant_id)
    # The trainer's per-tenant data store (services/trainer/scope.py TenantFiles.under): a service
    # may not import another, so its folder is named here too.
    trainer_files = settings.data_dir / "tenants" / tenant_id
    # Each scope's canaries live in that scope's data folder, so they go with the trainer files.
    had_canaries = bool(CanaryStore.under(settings.data_dir).of_tenant(tenant_id))
    removed = [
        label
        for label, done in (
            ("adapters", AdapterStore.under(settings.data_dir).delete_tenant(tenant_id)),
            ("canaries", had_canaries),
            ("trainer files", _remove_tree(trainer_files)),
        )
        if done
    ]
    if documents:
        from loraswarm.shared.vectorstore import VectorStore

        with VectorStore.open(settings) as vectors:
            if vectors.delete_tenant(tenant_id):
                removed.append("document shard")
    return removed


def delete(settings: Settings, tenant_id: str, *, documents: bool = True) -> list[str]:
    """Everything the tenant has: `delete_data`'s, then its API keys and configuration. Returns
    what was there to delete."""
    removed = delete_data(settings, tenant_id, documents=documents)
    if remove_tenant(access_file(settings), tenant_id):
        removed.append("API keys")
    path = config_path(settings, tenant_id)
    if path.exists():
        path.unlink()
        removed.append("configuration")
    return removed
