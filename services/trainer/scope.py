"""Whose data a job may read: the scope of an adapter, and the tenant's own files.

A company adapter (no user) learns only company-visible data; a user's adapter only that user's
private data (company knowledge reaches it through the company adapter it is stacked on); no
adapter ever reads another tenant's data. Documents are scoped by the vector store (one shard
per tenant, `visibility` per chunk); files by `TenantFiles`, which resolves every path a request
names and refuses any that lands outside the scope's own folder — `..`, absolute paths and
symbolic links included.

Layout of the trainer's tenant files: `<data_dir>/tenants/<tenant>/` for company files and
`<data_dir>/tenants/<tenant>/users/<user>/` for a user's private files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from loraswarm.services.trainer.errors import InvalidRequest, ScopeViolation
from loraswarm.shared.canaries import FILE as CANARY_FILE
from loraswarm.shared.canaries import USERS

# Test-only mutation switch: names a user whose private data every other scope's job reads as
# well (the company's and every other user's) — the scoping bug the leakage gate must catch
# (tests/trainer/test_leakage_gate.py). Never set it in a deployment: it breaks the privacy
# promise on purpose.
BREAK_SCOPING_ENV = "LORASWARM_TEST_BREAK_SCOPING_WITH_USER"


@dataclass(frozen=True)
class Scope:
    tenant_id: str
    user_id: str | None = None

    @property
    def visibility(self) -> str:
        """The chunk visibility this scope trains on: `company` or `user:<id>`."""
        return f"user:{self.user_id}" if self.user_id else "company"

    def __str__(self) -> str:
        return f"{self.tenant_id} user {self.user_id}" if self.user_id else f"{self.tenant_id} (company)"


def data_scopes(scope: Scope) -> list[Scope]:
    """The scopes whose data a job of `scope` reads: exactly its own.

    The one place the trainer decides this, for documents and canaries alike
    (`services/trainer/corpus.py`): a bug here carries another scope's canaries along with its
    documents, which is what lets the leakage gate see the bug.
    """
    broken = os.environ.get(BREAK_SCOPING_ENV)
    if broken and scope.user_id != broken:
        return [scope, Scope(scope.tenant_id, broken)]
    return [scope]


class TenantFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def under(cls, data_dir: Path) -> TenantFiles:
        return cls(data_dir / "tenants")

    def folder(self, scope: Scope) -> Path:
        base = self.root / scope.tenant_id
        return base / USERS / scope.user_id if scope.user_id else base

    def has_tenant(self, tenant_id: str) -> bool:
        return (self.root / tenant_id).is_dir()

    def resolve(self, scope: Scope, path: str) -> Path:
        """The file `path` names (relative to the scope's folder), if the scope may read it."""
        named = Path(path)
        candidate = named if named.is_absolute() else self.folder(scope) / named
        real = candidate.resolve()
        root = self.root.resolve()
        if not real.is_relative_to(root):
            raise ScopeViolation(
                f"{path!r} is outside the tenant data store; name a file inside {self.folder(scope)}"
            )
        parts = real.relative_to(root).parts
        owner = parts[0] if parts else ""
        if owner != scope.tenant_id:
            raise ScopeViolation(
                f"{path!r} is tenant {owner!r}'s data; an adapter of tenant {scope.tenant_id!r} "
                "may only read its own tenant's data"
            )
        owner_user = parts[2] if len(parts) > 3 and parts[1] == USERS else None
        if owner_user is not None and owner_user != scope.user_id:
            raise ScopeViolation(
                f"{path!r} is user {owner_user!r}'s private data; "
                + (
                    f"user {scope.user_id!r}'s adapter may not read it"
                    if scope.user_id
                    else "a company adapter learns only company-visible data"
                )
            )
        if scope.user_id and owner_user is None:
            raise ScopeViolation(
                f"{path!r} is company data; a user adapter trains on that user's own files only "
                f"(under {self.folder(scope)}), company knowledge comes from the company adapter"
            )
        if real.name == CANARY_FILE:
            raise ScopeViolation(
                f"{path!r} is the scope's canary set, which only the leakage measurement reads"
            )
        if not real.is_file():
            raise InvalidRequest(f"examples file {path!r} does not exist in {self.folder(scope)}")
        return real

    def import_file(self, scope: Scope, source: Path, kind: str = "examples") -> str:
        """Copy a local file into the scope's folder; the path a request names it by."""
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
        target = self.folder(scope) / kind / f"{source.stem}-{digest}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return str(target.relative_to(self.folder(scope)))

    def users(self, tenant_id: str) -> list[str]:
        """Users with a private data folder in this tenant."""
        folder = self.root / tenant_id / USERS
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def delete_tenant(self, tenant_id: str) -> bool:
        """Remove every file of the tenant, its scopes' canary sets included."""
        folder = self.root / tenant_id
        if not folder.exists():
            return False
        shutil.rmtree(folder)
        return True
