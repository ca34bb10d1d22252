"""Checks on what comes in and what goes out."""

from __future__ import annotations

from loraswarm.shared.events import RecommendationRequested
from loraswarm.shared.secrets import SecretRegistry
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


def leaked_secret(text: str, tenant_id: str, registry: SecretRegistry) -> str | None:
    """The tenant whose registered secret appears in `text`, if any (never this tenant's own)."""
    for other, secrets in registry.of_others(tenant_id).items():
        if any(secret in text for secret in secrets):
            return other
    return None
