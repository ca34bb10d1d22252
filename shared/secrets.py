"""Secrets the planner's output guardrail checks answers against (besides scope canaries).

- `SecretRegistry`: strings registered per tenant, which no other tenant's answer may ever
  contain; one JSON-lines file per tenant under `<data_dir>/secrets/`.
- `DocumentSecrets`: strings a tenant declares secret in its documents (`secrets:` in a
  document's metadata or markdown front matter), written by ingestion, kept per scope: a user's
  only her own answers may contain, the company's no answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from loraswarm.shared.files import write_atomic


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


# ---------------------------------------------------------------- secrets declared in documents

SECRETS_FILE = "secrets.json"
MIN_SECRET_CHARS = 6


class DocumentSecret(BaseModel):
    """One string a document marks secret, in the scope of the document's visibility."""

    model_config = ConfigDict(frozen=True)

    text: str
    doc_id: str
    user_id: str | None = None  # set for a user's private document: only her answers may show it


def declared_in(metadata: dict[str, Any]) -> list[str]:
    """The secrets a document's metadata declares (`secrets: [...]`); `ValueError` says what is wrong.

    A secret is matched as a substring of answers, so a short one would withhold ordinary text.
    """
    value = metadata.get("secrets")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValueError("metadata `secrets` must be a list of strings (each one a secret of the document)")
    short = [s for s in value if len(s.strip()) < MIN_SECRET_CHARS]
    if short:
        raise ValueError(
            f"{len(short)} of the document's `secrets` are shorter than {MIN_SECRET_CHARS} characters and "
            "would match ordinary text; declare the whole secret string"
        )
    return sorted({s.strip() for s in value})


class DocumentSecrets:
    """Secrets declared in documents, kept with their scope's data like its canaries:

        <data_dir>/tenants/<tenant>/secrets.json                 company documents' secrets
        <data_dir>/tenants/<tenant>/users/<user>/secrets.json    one user's private documents'

    each file `{doc_id: [secret, ...]}`, so deleting a tenant's data deletes them too. Ingestion
    writes a document's set before its chunks become retrievable (a re-ingested document replaces
    its set); the planner's output guardrail reads one tenant's files.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def under(cls, data_dir: Path) -> DocumentSecrets:
        return cls(data_dir / "tenants")

    def _file(self, tenant_id: str, user_id: str | None) -> Path:
        base = self.root / tenant_id
        return (base / "users" / user_id if user_id else base) / SECRETS_FILE

    def _files(self, tenant_id: str) -> list[Path]:
        base = self.root / tenant_id
        return [base / SECRETS_FILE, *sorted((base / "users").glob(f"*/{SECRETS_FILE}"))]

    @staticmethod
    def _read(path: Path) -> dict[str, list[str]]:
        if not path.is_file():
            return {}
        data: dict[str, list[str]] = json.loads(path.read_text())
        return data

    def record(self, tenant_id: str, visibility: str, doc_id: str, secrets: list[str]) -> None:
        """The document's secrets now (none: it has no more); any older set of it, in any scope, goes."""
        user_id = visibility.removeprefix("user:") if visibility.startswith("user:") else None
        target = self._file(tenant_id, user_id)
        for path in self._files(tenant_id):
            held = self._read(path)
            if doc_id in held and path != target:
                del held[doc_id]
                write_atomic(path, json.dumps(held, indent=1, sort_keys=True))
        held = self._read(target)
        if not secrets and doc_id not in held:
            return
        if secrets:
            held[doc_id] = secrets
        else:
            del held[doc_id]
        write_atomic(target, json.dumps(held, indent=1, sort_keys=True))

    def of_tenant(self, tenant_id: str) -> list[DocumentSecret]:
        """Every secret the tenant's documents declare, with the scope it belongs to."""
        out = []
        for path in self._files(tenant_id):
            user_id = path.parent.name if path.parent.parent.name == "users" else None
            for doc_id, secrets in self._read(path).items():
                out += [DocumentSecret(text=s, doc_id=doc_id, user_id=user_id) for s in secrets]
        return out
