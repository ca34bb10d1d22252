"""Canaries: random secrets planted in an adapter's training data to measure leakage.

The method is Carlini et al. 2019, "The Secret Sharer": a fixed template filled with random
digits is planted into the training data; how much better a model ranks it than never-planted
fills of the same template (its exposure) shows whether the model memorised it. The trainer
plants a fresh set into every adapter it trains and registers the set here when the adapter is
published. The registry is what later checks read:

- the trainer ranks every *other* scope's canaries under each new adapter (a company adapter must
  not know a user's secrets, nor one tenant another's);
- an output guardrail can refuse text that contains any registered secret (`found_in`).

Layout: `<data_dir>/canaries/<tenant>/<name>@<version>.json`, one `CanarySet` each. Deleting a
tenant deletes its sets with its adapters.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from loraswarm.shared.envelope import utc_now
from loraswarm.shared.files import write_atomic


class CanarySet(BaseModel):
    """The secrets planted into one adapter version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str
    user_id: str | None = Field(default=None, description="Set when planted into a user's adapter.")
    adapter_id: str = Field(description="`<tenant>/<name>@<version>` the secrets were planted into.")
    template: str = Field(description="The fixed canary text; `{secret}` marks the random part.")
    secrets: list[str] = Field(description="The random fills that were planted.")
    created_at: datetime = Field(default_factory=utc_now)

    def texts(self) -> list[str]:
        return [fill(self.template, s) for s in self.secrets]

    def visible_to(self, tenant_id: str, user_id: str | None) -> bool:
        """Whether an adapter of this scope may legitimately know these secrets.

        Company data is visible to everyone in the company (and a user's adapter sits on the
        company adapter); a user's private data only to that user.
        """
        if self.tenant_id != tenant_id:
            return False
        return self.user_id is None or self.user_id == user_id


def fill(template: str, secret: str) -> str:
    return template.replace("{secret}", secret)


class CanaryRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def under(cls, data_dir: Path) -> CanaryRegistry:
        return cls(data_dir / "canaries")

    def _file(self, adapter_id: str) -> Path:
        tenant, rest = adapter_id.split("/", 1)
        return self.root / tenant / f"{rest}.json"

    def register(self, canaries: CanarySet) -> None:
        write_atomic(self._file(canaries.adapter_id), canaries.model_dump_json(indent=2))

    def all(self, tenant_id: str | None = None) -> list[CanarySet]:
        if not self.root.is_dir():
            return []
        folders = [self.root / tenant_id] if tenant_id else sorted(self.root.iterdir())
        found = []
        for folder in folders:
            if folder.is_dir():
                for file in sorted(folder.glob("*.json")):
                    found.append(CanarySet.model_validate_json(file.read_text()))
        return found

    def foreign_to(self, tenant_id: str, user_id: str | None) -> list[CanarySet]:
        """Every registered set an adapter of this scope must not know."""
        return [c for c in self.all() if not c.visible_to(tenant_id, user_id)]

    def found_in(self, text: str, sets: Iterable[CanarySet] | None = None) -> list[CanarySet]:
        """The sets one of whose secrets appears in `text` (for output guardrails)."""
        return [c for c in (self.all() if sets is None else sets) if any(s in text for s in c.secrets)]

    def delete_adapter(self, tenant_id: str, name: str) -> int:
        folder = self.root / tenant_id
        doomed = list(folder.glob(f"{name}@*.json")) if folder.is_dir() else []
        for file in doomed:
            file.unlink()
        return len(doomed)

    def delete_tenant(self, tenant_id: str) -> bool:
        folder = self.root / tenant_id
        if not folder.exists():
            return False
        shutil.rmtree(folder)
        return True
