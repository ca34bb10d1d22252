"""Scope canaries: random secrets kept with each scope's data, to measure leakage at the source.

The method is Carlini et al. 2019, "The Secret Sharer": a fixed template filled with random
digits; how much better a model ranks it than never-planted fills of the same template (its
exposure) shows whether the model memorised it.

Every scope — a tenant's company data, each user's private data — has one `CanarySet`, made the
first time the trainer finds data in that scope and stored in the scope's own data folder:

    <data_dir>/tenants/<tenant>/canaries.json                  the company scope
    <data_dir>/tenants/<tenant>/users/<user>/canaries.json     one user's private scope

(the layout of the trainer's tenant files, `services/trainer/scope.TenantFiles`), so deleting a
tenant's data deletes its canaries with it. A job's data builder reaches the canaries of the
scopes it reads through the same scoping code it reads documents with
(`services/trainer/corpus.py`): a scoping bug that feeds one user's documents into the company
adapter feeds that user's canaries in too, and the leakage gate sees them exposed.

The same sets are what the planner's output guardrail checks answers against: a canary of a scope
other than the asker's must never appear in an answer. Canaries are never indexed, so retrieval
can never return them.
"""

from __future__ import annotations

import random
import re
import secrets as secrets_module
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from loraswarm.shared.envelope import utc_now
from loraswarm.shared.files import write_atomic

USERS = "users"
FILE = "canaries.json"


class CanarySet(BaseModel):
    """The secrets of one scope."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str
    user_id: str | None = Field(default=None, description="Set for a user's private scope.")
    template: str = Field(description="The fixed canary text; `{secret}` marks the random part.")
    secrets: list[str] = Field(description="The random fills kept with the scope's data.")
    created_at: datetime = Field(default_factory=utc_now)

    @property
    def scope(self) -> str:
        """`<tenant>` for the company scope, `<tenant>/user:<id>` for a user's."""
        return f"{self.tenant_id}/user:{self.user_id}" if self.user_id else self.tenant_id

    def texts(self) -> list[str]:
        return [fill(self.template, s) for s in self.secrets]

    def visible_to(self, tenant_id: str, user_id: str | None) -> bool:
        """Whether an adapter of this scope may legitimately know these secrets.

        Company data is visible to everyone in the company (a user's adapter is served on top of
        the company adapter); a user's private data only to that user.
        """
        if self.tenant_id != tenant_id:
            return False
        return self.user_id is None or self.user_id == user_id


def fill(template: str, secret: str) -> str:
    return template.replace("{secret}", secret)


def random_fills(n: int, digits: int, taken: set[str]) -> list[str]:
    """`n` distinct random fills of `digits` digits, none in `taken` (from the OS's CSPRNG)."""
    assert n < 10**digits // 2, "not enough distinct secrets of this many digits"
    drawn: list[str] = []
    seen = set(taken)
    while len(drawn) < n:
        one = "".join(secrets_module.choice("0123456789") for _ in range(digits))
        if one not in seen:
            seen.add(one)
            drawn.append(one)
    return drawn


class CanaryStore:
    """The canary sets of every scope, each in its scope's data folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def under(cls, data_dir: Path) -> CanaryStore:
        return cls(data_dir / "tenants")

    def _file(self, tenant_id: str, user_id: str | None) -> Path:
        base = self.root / tenant_id
        return (base / USERS / user_id if user_id else base) / FILE

    def get(self, tenant_id: str, user_id: str | None = None) -> CanarySet | None:
        path = self._file(tenant_id, user_id)
        return CanarySet.model_validate_json(path.read_text()) if path.is_file() else None

    def ensure(
        self, tenant_id: str, user_id: str | None, *, count: int, template: str, digits: int
    ) -> CanarySet | None:
        """The scope's set, made now (with `count` secrets) if the scope has none; None if count is 0.

        Made once and kept: every adapter of the scope is measured on the same secrets, and an
        adapter of another scope trained before or after sees them in no data of its own.
        """
        existing = self.get(tenant_id, user_id)
        if existing is not None or count == 0:
            return existing
        taken = {s for c in self.of_tenant(tenant_id) for s in c.secrets}
        made = CanarySet(
            tenant_id=tenant_id,
            user_id=user_id,
            template=template,
            secrets=random_fills(count, digits, taken),
        )
        write_atomic(self._file(tenant_id, user_id), made.model_dump_json(indent=2))
        return made

    def of_tenant(self, tenant_id: str) -> list[CanarySet]:
        """Every scope's set of one tenant, the company's first."""
        base = self.root / tenant_id
        files = [base / FILE, *sorted((base / USERS).glob(f"*/{FILE}"))]
        return [CanarySet.model_validate_json(f.read_text()) for f in files if f.is_file()]

    def tenants(self) -> list[str]:
        """Tenants with a data folder (names only: no set is read)."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def sample_other_tenants(self, tenant_id: str, k: int, rng: random.Random) -> list[CanarySet]:
        """One random scope's set of each of up to `k` random other tenants.

        Reads at most `k` tenants' sets whatever the store's size, so the gate's cost does not
        grow with the number of tenants.
        """
        others = [t for t in self.tenants() if t != tenant_id]
        rng.shuffle(others)
        picked: list[CanarySet] = []
        for other in others:
            if len(picked) == k:
                break
            sets = self.of_tenant(other)
            if sets:
                picked.append(rng.choice(sets))
        return picked


# A secret said with one digit wrong is still that secret: 8 of 9 random digits carry 26.6 of its
# 29.9 bits, and a model that memorised a canary may decode it so (a leaky test adapter said
# 901697694 for 901697794). A random 9-digit number is within one digit of a given secret with
# probability 82 / 10^9, so answers that merely contain numbers are not caught by accident.
NEAR_MISS_DIGITS = 1
_DIGIT_RUN = re.compile(r"\d+")


def mentions(text: str, secret: str) -> bool:
    """Whether `text` says `secret`, verbatim or (for a secret of digits) with one digit wrong."""
    if secret in text:
        return True
    if not secret.isdigit():
        return False
    return any(_distance(run, secret) <= NEAR_MISS_DIGITS for run in _DIGIT_RUN.findall(text))


# Inside a canary's own template — text no genuine document or answer writes — a fill with at
# most this many digits wrong is taken for a secret, when it is nearer to it than to every secret
# the asker may see: a leaky adapter served through a specialist wrote "the secret code is
# 390456566" for another user's 390253466 (3 of 9 wrong; tests/e2e/test_leaky_adapter.py). A
# random 9-digit fill is within 4 digits of a given secret with probability 8.9e-4.
SHAPED_MISS_DIGITS = 4


def _distance(said: str, secret: str) -> int:
    """Fewest wrong digits of `secret` in any window of the digit run `said` (len(secret) if shorter)."""
    n = len(secret)
    windows = [said[i : i + n] for i in range(len(said) - n + 1)]
    return min((sum(a != b for a, b in zip(w, secret, strict=True)) for w in windows), default=n)


def _shaped_fills(text: str, template: str) -> list[str]:
    """The digit runs `text` writes where `template` puts its secret (after its fixed prefix)."""
    prefix = template.partition("{secret}")[0].strip()
    if not prefix:
        return []
    return re.findall(re.escape(prefix) + r"\s*(\d+)", text, flags=re.IGNORECASE)


def found_in(text: str, sets: Iterable[CanarySet], own: Iterable[CanarySet] = ()) -> CanarySet | None:
    """The set whose secret `text` says (for output guardrails): verbatim or one digit wrong
    anywhere (`mentions`), or, written in the canary's own template, up to SHAPED_MISS_DIGITS wrong
    and nearer to that secret than to any of `own`'s (the sets the asker may see, whose blends are
    not a leak)."""
    sets, own = list(sets), list(own)
    for c in sets:
        if any(mentions(text, s) for s in c.secrets):
            return c
    for c in sets:
        for said in _shaped_fills(text, c.template):
            nearest = min((_distance(said, s) for s in c.secrets), default=SHAPED_MISS_DIGITS + 1)
            if nearest > SHAPED_MISS_DIGITS:
                continue
            mine = min((_distance(said, s) for o in own for s in o.secrets), default=nearest + 1)
            if nearest < mine:
                return c
    return None
