"""Checks on what comes in and what goes out.

The output guardrail (`OutputGuard`) runs on every specialist answer and on the composed answer.
It withholds text that contains

- a canary of any scope of the tenant but the asker's own (shared/canaries.py: the secrets
  kept with each scope's data; in an answer they mean an adapter or a prompt carried another
  scope's data — one user's into another's answer included);
- a secret the tenant declares in its configuration (`secrets`: the company's ones, which no
  answer may contain, and each user's, which only that user's answers may), or in a document
  marked secret (`secrets:` in its metadata or front matter, noted by ingestion in the scope of
  the document's visibility, shared/secrets.py `DocumentSecrets`: same rule);
- a secret registered for another tenant (shared/secrets.py).

A hit ends the request as `guardrail` with the reason and is counted
(`loraswarm_guardrail_hits_total`). The check reads one tenant's canary and document-secret files
(one of each per scope), never the whole store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loraswarm.shared.canaries import CanaryStore, found_in
from loraswarm.shared.events import RecommendationRequested
from loraswarm.shared.metrics import GUARDRAIL_HITS
from loraswarm.shared.secrets import DocumentSecrets, SecretRegistry
from loraswarm.shared.tenants import TenantConfig


def input_problem(request: RecommendationRequested, tenant: TenantConfig | None) -> str | None:
    """Why a request may not be served, or None."""
    if tenant is None:
        return f"tenant {request.tenant_id!r} is not configured"
    if not tenant.allows_user(request.user_id):
        return f"user {request.user_id!r} is not allowed for tenant {request.tenant_id!r}"
    if len(request.question) > tenant.limits.max_question_chars:
        return f"the question has {len(request.question)} characters; the limit is {tenant.limits.max_question_chars}"
    return None


@dataclass(frozen=True)
class Leak:
    kind: str  # canary | declared_secret | other_tenant_secret
    reason: str


class OutputGuard:
    def __init__(self, data_dir: Path, registry: SecretRegistry) -> None:
        self.canaries = CanaryStore.under(data_dir)
        self.documents = DocumentSecrets.under(data_dir)
        self.registry = registry

    def check(
        self, text: str, tenant_id: str, user_id: str | None, tenant: TenantConfig | None, *, stage: str
    ) -> Leak | None:
        """What `text` may not show the asker (`tenant_id`, `user_id`), or None; a hit is counted."""
        leak = self._find(text, tenant_id, user_id, tenant)
        if leak is not None:
            GUARDRAIL_HITS.labels(tenant_id, leak.kind, stage).inc()
        return leak

    def _find(
        self, text: str, tenant_id: str, user_id: str | None, tenant: TenantConfig | None
    ) -> Leak | None:
        sets = self.canaries.of_tenant(tenant_id)
        others = [c for c in sets if c.user_id != user_id]
        hit = found_in(text, others, own=[c for c in sets if c.user_id == user_id])
        if hit is not None:
            return Leak("canary", f"it contained a canary of scope {hit.scope}, which is not the asker's")
        for secret in tenant.secrets if tenant else []:
            if (secret.user_id is None or secret.user_id != user_id) and secret.text in text:
                whose = f"user {secret.user_id!r}'s" if secret.user_id else "the company's"
                return Leak("declared_secret", f"it contained {whose} declared secret")
        for marked in self.documents.of_tenant(tenant_id):
            if (marked.user_id is None or marked.user_id != user_id) and marked.text in text:
                whose = f"user {marked.user_id!r}'s" if marked.user_id else "the company's"
                return Leak("declared_secret", f"it contained a secret {whose} document marks secret")
        other = leaked_secret(text, tenant_id, self.registry)
        if other is not None:
            return Leak("other_tenant_secret", "it contained a secret registered for another tenant")
        return None


def leaked_secret(text: str, tenant_id: str, registry: SecretRegistry) -> str | None:
    """The tenant whose registered secret appears in `text`, if any (never this tenant's own)."""
    for other, secrets in registry.of_others(tenant_id).items():
        if any(secret in text for secret in secrets):
            return other
    return None
