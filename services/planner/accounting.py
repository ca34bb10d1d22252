"""Token accounting: every LLM call of a request, per tenant, user, adapter and step.

Counted where the tokens are spent, one call at a time, so nothing that fails later is lost: a
plan attempt the planner rejects, a composition that does not validate, a retry, a request that
ends in `recommendation.failed`. The planner runs each LLM step inside `step(...)`; the primary
LLM client reports each answered call to that step's `StepLedger` (a context variable, so plan.py
and compose.py need not carry it), which

- adds it to the step's usage, which the planner saves in the request's state and publishes in
  `recommendation.completed/failed` (`usage_by_step`);
- counts it in `loraswarm_llm_tokens_total` (service, tenant, model, type — what the Grafana
  dashboard charts) and `loraswarm_request_tokens_total` (tenant, user, adapter, step);
- refuses a call once the request's token budget is spent (`BudgetSpent`), before it is made.

Specialists count their own calls in `loraswarm_llm_tokens_total` (services/specialist); the
planner counts their results per step here (`specialist_result`). A step redone after a crash
is counted again in the metrics (its tokens were spent twice) but once in the event (its state).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from loraswarm.shared.events import SpecialistResult, TokenUsage
from loraswarm.shared.metrics import REQUEST_TOKENS, count_tokens


class BudgetSpent(Exception):
    """The request's token budget is spent: no further LLM call is made for it."""


@dataclass
class StepLedger:
    """The LLM calls of one step of one request (`plan`, `compose`)."""

    tenant_id: str
    user_id: str | None
    step: str
    budget_left: int | None = None  # None: no budget
    usage: TokenUsage = field(default_factory=TokenUsage)
    calls: int = 0

    def check(self) -> None:
        """Raise `BudgetSpent` if the budget leaves nothing for another call."""
        if self.budget_left is not None and self.spent() >= self.budget_left:
            raise BudgetSpent(
                f"the request's token budget is spent ({self.spent()} of {self.budget_left} tokens "
                f"left at the start of {self.step}); raise the tenant's limits.token_budget to allow more"
            )

    def spent(self) -> int:
        return self.usage.input_tokens + self.usage.output_tokens

    def record(self, model: str, usage: TokenUsage) -> None:
        self.calls += 1
        self.usage = TokenUsage(
            input_tokens=self.usage.input_tokens + usage.input_tokens,
            output_tokens=self.usage.output_tokens + usage.output_tokens,
        )
        count_tokens(
            "planner",
            self.tenant_id,
            model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
        )
        _count_step(self.tenant_id, self.user_id, "base", self.step, usage)


_CURRENT: ContextVar[StepLedger | None] = ContextVar("loraswarm_step_ledger", default=None)


@contextlib.contextmanager
def step(tenant_id: str, user_id: str | None, name: str, *, budget_left: int | None) -> Iterator[StepLedger]:
    """Account the LLM calls made inside the block to one step of one request."""
    ledger = StepLedger(tenant_id, user_id, name, budget_left)
    token = _CURRENT.set(ledger)
    try:
        yield ledger
    finally:
        _CURRENT.reset(token)


def current() -> StepLedger | None:
    """The ledger of the step running now, if any."""
    return _CURRENT.get()


def specialist_result(tenant_id: str, user_id: str | None, result: SpecialistResult) -> None:
    """Count a specialist's tokens under its step and the adapter stack that really ran."""
    adapter = "+".join(result.adapter_ids) or "base"
    _count_step(tenant_id, user_id, adapter, f"specialist:{result.specialist}", result.usage)


def _count_step(tenant_id: str, user_id: str | None, adapter: str, step: str, usage: TokenUsage) -> None:
    user = user_id or ""
    REQUEST_TOKENS.labels(tenant_id, user, adapter, step, "input").inc(usage.input_tokens)
    REQUEST_TOKENS.labels(tenant_id, user, adapter, step, "output").inc(usage.output_tokens)
