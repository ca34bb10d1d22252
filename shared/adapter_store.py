"""The adapter store: every tenant's adapters on disk, versioned, with a manifest each.

Layout under `<data_dir>/adapters/` (the trainer writes it, the model server reads it):

    <tenant>/<name>/versions/<n>/adapter_model.safetensors   peft's weights
                                 adapter_config.json         peft's config
                                 manifest.json               `AdapterManifest`
    <tenant>/<name>/current                                  the version served by default
    <tenant>/<name>/refused/<request event id>.json         `Refusal`: a request's verdict that
                                                             published nothing

Adapter ids are `<tenant>/<name>[@<version>]`; without a version the current one is meant.
Publishing writes a new version folder under a temporary name and renames it into place, then
moves `current` with an atomic rename: a reader never sees half an adapter.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loraswarm.shared.envelope import utc_now
from loraswarm.shared.files import write_atomic
from loraswarm.shared.ids import AdapterRef as AdapterRef  # re-exported: the store's callers name it

_REQUIRED = ("adapter_model.safetensors", "adapter_config.json")


class AdapterError(Exception):
    """Base of the adapter store's errors."""


class AdapterNotFound(AdapterError):
    pass


class InvalidAdapter(AdapterError):
    pass


class AdapterManifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    tenant_id: str
    user_id: str | None = None
    name: str
    version: str = ""
    method: str = Field(default="lora", description="`lora` or `llama_adapter`.")
    base_model: str
    base_model_hash: str = ""
    data_fingerprint: str = ""
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utc_now)


class Refusal(BaseModel):
    """Why a training request published nothing, kept so that the same request (a redelivery, or
    a rerun on unchanged data) comes to the same verdict without training again."""

    model_config = ConfigDict(extra="forbid")

    request_event_id: str
    code: str
    reason: str
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utc_now)


@dataclass(frozen=True)
class AdapterVersion:
    ref: AdapterRef  # with the version filled in
    path: Path
    manifest: AdapterManifest


def parse_adapter_id(adapter_id: str) -> AdapterRef:
    try:
        return AdapterRef.parse(adapter_id)
    except ValueError as exc:
        raise AdapterNotFound(str(exc)) from exc


class AdapterStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def under(cls, data_dir: Path) -> AdapterStore:
        return cls(data_dir / "adapters")

    def _dir(self, tenant: str, name: str) -> Path:
        return self.root / tenant / name

    def versions(self, tenant: str, name: str) -> list[str]:
        folder = self._dir(tenant, name) / "versions"
        if not folder.is_dir():
            return []
        return sorted((p.name for p in folder.iterdir() if p.name.isdigit()), key=int)

    def current(self, tenant: str, name: str) -> str | None:
        try:
            return (self._dir(tenant, name) / "current").read_text().strip() or None
        except FileNotFoundError:
            return None

    def resolve(self, adapter_id: str) -> AdapterVersion:
        """The files of an adapter id; `AdapterNotFound` if there is no such adapter or version."""
        ref = parse_adapter_id(adapter_id)
        version = ref.version or self.current(ref.tenant_id, ref.name)
        if version is None:
            raise AdapterNotFound(f"adapter {adapter_id!r} does not exist")
        path = self._dir(ref.tenant_id, ref.name) / "versions" / version
        if not path.is_dir():
            raise AdapterNotFound(f"adapter {ref.tenant_id}/{ref.name} has no version {version}")
        manifest = AdapterManifest.model_validate_json((path / "manifest.json").read_text())
        return AdapterVersion(AdapterRef(ref.tenant_id, ref.name, version), path, manifest)

    def publish(self, source: Path, manifest: AdapterManifest) -> AdapterVersion:
        """Copy a saved peft adapter in as the next version and make it current."""
        missing = [f for f in _REQUIRED if not (source / f).is_file()]
        if missing:
            raise InvalidAdapter(f"{source} lacks {', '.join(missing)}; save it with peft's save_pretrained")
        folder = self._dir(manifest.tenant_id, manifest.name)
        (folder / "versions").mkdir(parents=True, exist_ok=True)
        existing = self.versions(manifest.tenant_id, manifest.name)
        version = str(int(existing[-1]) + 1 if existing else 1)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
        for file in source.iterdir():
            if file.is_file():
                shutil.copy2(file, staging / file.name)
        final = manifest.model_copy(update={"version": version})
        (staging / "manifest.json").write_text(final.model_dump_json(indent=2))
        staging.rename(folder / "versions" / version)
        self._set_current(manifest.tenant_id, manifest.name, version)
        return self.resolve(f"{manifest.tenant_id}/{manifest.name}@{version}")

    def _set_current(self, tenant: str, name: str, version: str) -> None:
        write_atomic(self._dir(tenant, name) / "current", version + "\n")

    def rollback(self, tenant: str, name: str, to: str | None = None) -> str:
        """Make an earlier version current (default: the one before the current)."""
        versions = self.versions(tenant, name)
        current = self.current(tenant, name)
        if not versions or (current is None and to is None):
            raise AdapterNotFound(f"adapter {tenant}/{name} does not exist")
        if to is None:
            assert current is not None
            older = [v for v in versions if int(v) < int(current)]
            if not older:
                raise AdapterError(
                    f"{tenant}/{name}@{current} is the oldest version; nothing to roll back to"
                )
            to = older[-1]
        if to not in versions:
            raise AdapterNotFound(f"adapter {tenant}/{name} has no version {to}")
        self._set_current(tenant, name, to)
        return to

    def withdraw(self, tenant: str, name: str) -> bool:
        """Stop serving an adapter without deleting it: no version is current (resolving it without
        a version is then `AdapterNotFound`); `rollback(..., to=)` or a publish makes one current again."""
        current = self._dir(tenant, name) / "current"
        if not current.exists():
            return False
        current.unlink()
        return True

    def _refusal_file(self, tenant: str, name: str, request_event_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-fA-F-]{1,64}", request_event_id):
            raise AdapterError(f"{request_event_id!r} is not an event id")
        return self._dir(tenant, name) / "refused" / f"{request_event_id}.json"

    def record_refusal(self, tenant: str, name: str, refusal: Refusal) -> None:
        write_atomic(
            self._refusal_file(tenant, name, refusal.request_event_id), refusal.model_dump_json(indent=2)
        )

    def refusal(self, tenant: str, name: str, request_event_id: str) -> Refusal | None:
        try:
            text = self._refusal_file(tenant, name, request_event_id).read_text()
        except FileNotFoundError:
            return None
        return Refusal.model_validate_json(text)

    def list(self, tenant: str | None = None) -> list[AdapterVersion]:
        tenants = (
            [tenant] if tenant else sorted(p.name for p in self.root.iterdir()) if self.root.is_dir() else []
        )
        found = []
        for t in tenants:
            base = self.root / t
            if not base.is_dir():
                continue
            for adapter in sorted(base.iterdir()):
                if adapter.is_dir() and self.current(t, adapter.name):
                    found.append(self.resolve(f"{t}/{adapter.name}"))
        return found

    def delete(self, tenant: str, name: str) -> bool:
        folder = self._dir(tenant, name)
        if not folder.exists():
            return False
        shutil.rmtree(folder)
        return True

    def delete_tenant(self, tenant: str) -> bool:
        folder = self.root / tenant
        if not folder.exists():
            return False
        shutil.rmtree(folder)
        return True
