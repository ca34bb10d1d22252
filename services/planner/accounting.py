"""Token accounting: per tenant, user, adapter and step, as Prometheus metrics.

The same numbers travel in `recommendation.completed` (`usage_by_step`, `contributions`); this
counter lets a dashboard sum them over time without reading events.
"""

from __future__ import annotations

from loraswarm.shared.events import RecommendationCompleted
from loraswarm.shared.metrics import REQUEST_TOKENS as TOKENS


def count(completed: RecommendationCompleted) -> None:
    user = completed.user_id or ""
    for step, usage in completed.usage_by_step.items():
        if step.startswith("specialist:"):
            continue  # counted below, with the adapters they ran with
        TOKENS.labels(completed.tenant_id, user, "base", step, "input").inc(usage.input_tokens)
        TOKENS.labels(completed.tenant_id, user, "base", step, "output").inc(usage.output_tokens)
    for c in completed.contributions:
        adapter = "+".join(c.adapter_ids) or "base"
        step = f"specialist:{c.specialist}"
        TOKENS.labels(completed.tenant_id, user, adapter, step, "input").inc(c.usage.input_tokens)
        TOKENS.labels(completed.tenant_id, user, adapter, step, "output").inc(c.usage.output_tokens)
