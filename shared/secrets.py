"""Secrets registered per tenant, which no other tenant's answer may ever contain.

The trainer's leakage canaries are registered here, and so can a tenant's own sensitive strings;
the planner's output check refuses an answer that contains a secret of another tenant. Stored as
one JSON-lines file per tenant under `<data_dir>/secrets/`.
"""

from __future__ import annotations

import json
from pathlib import Path


class SecretRegistry:
    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / "secrets"

    def register(self, tenant_id: str, secret: str, *, kind: str = "canary") -> None:
        if len(secret) < 6:
            raise ValueError("a secret shorter than 6 characters would match ordinary text")
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / f"{tenant_id}.jsonl").open("a") as out:
            out.write(json.dumps({"secret": secret, "kind": kind}) + "\n")

    def of(self, tenant_id: str) -> list[str]:
        path = self.folder / f"{tenant_id}.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line)["secret"] for line in path.read_text().splitlines() if line.strip()]

    def of_others(self, tenant_id: str) -> dict[str, list[str]]:
        if not self.folder.is_dir():
            return {}
        return {p.stem: self.of(p.stem) for p in sorted(self.folder.glob("*.jsonl")) if p.stem != tenant_id}

    def delete_tenant(self, tenant_id: str) -> None:
        (self.folder / f"{tenant_id}.jsonl").unlink(missing_ok=True)
