"""Asking the primary LLM for a plan: which specialists answer.

A tenant whose specialists all fit its plan (`limits.max_specialists`; one specialist, always)
needs no choice: they all answer, without an LLM call, unless the tenant sets `planning: llm`.
Otherwise the plan comes back as structured output (OpenAI-strict, built from `Plan`, with the
tenant's specialist names as an enum). An invalid plan, or one naming unknown specialists, is asked for
once more with the error shown to the model; after that the tenant's default plan is used and
the completed event says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loraswarm.services.planner.llm import LLMError, PrimaryLLM, parse_json_object
from loraswarm.shared.events import Passage, TokenUsage
from loraswarm.shared.tenants import PlanStep, TenantConfig


@dataclass(frozen=True)
class PlannedTask:
    specialist: str
    question: str


class Plan(BaseModel):
    """What the primary LLM decides: who answers. Nothing else — each specialist is asked the
    user's question, and the composer answers each of its parts — so the plan is a few enum
    tokens, and the schema needs no length bounds (which OpenAI's strict mode does not allow)."""

    model_config = ConfigDict(extra="forbid")

    specialists: list[str] = Field(min_length=1, description="The specialists who answer, best first.")


def plan_schema(tenant: TenantConfig) -> dict[str, Any]:
    """OpenAI-strict (`to_strict_json_schema`), with the tenant's specialists as the only choices."""
    schema = to_strict_json_schema(Plan)
    names = schema["properties"]["specialists"]
    names["items"]["enum"] = [s.name for s in tenant.specialists]
    names["maxItems"] = tenant.limits.max_specialists
    return schema


def check_plan(plan: Plan, tenant: TenantConfig, question: str) -> list[PlannedTask]:
    """The plan's tasks, or `ValueError` naming what is wrong with them."""
    unknown = [name for name in plan.specialists if tenant.specialist(name) is None]
    if unknown:
        known = ", ".join(s.name for s in tenant.specialists)
        raise ValueError(f"unknown specialist(s) {unknown}; choose from: {known}")
    names = list(dict.fromkeys(plan.specialists))  # one task per specialist; duplicates add nothing
    return [PlannedTask(name, question) for name in names[: tenant.limits.max_specialists]]


def planning_messages(tenant: TenantConfig, question: str, passages: list[Passage]) -> list[dict[str, str]]:
    """Short and single-purpose, for the 135M default: choose specialists, nothing else."""
    roster = "\n".join(f"- {s.name}: {s.description[:100]}" for s in tenant.specialists)
    context = "\n".join(f"- {p.text[:160]}" for p in passages[:3]) or "- (no documents found)"
    return [
        {
            "role": "system",
            "content": f"Pick at most {tenant.limits.max_specialists} specialists to answer the question. "
            f"Specialists:\n{roster}\nAnswer with JSON only.",
        },
        {"role": "user", "content": f"Question: {question}\nDocuments:\n{context}"},
    ]


@dataclass
class PlanOutcome:
    tasks: list[PlannedTask]
    usage: TokenUsage
    notes: list[str] = field(default_factory=list)
    used_default: bool = False
    llm_ms: float = 0.0


async def make_plan(
    llm: PrimaryLLM,
    tenant: TenantConfig,
    question: str,
    passages: list[Passage],
    *,
    max_tokens: int,
    timeout_s: float,
) -> PlanOutcome:
    if len(tenant.specialists) == 1 or (
        tenant.planning == "auto" and len(tenant.specialists) <= tenant.limits.max_specialists
    ):
        # Nothing to choose: every specialist fits the plan, each asked the user's question. No LLM call.
        return PlanOutcome([PlannedTask(s.name, question) for s in tenant.specialists], TokenUsage())
    messages = planning_messages(tenant, question, passages)
    schema = plan_schema(tenant)
    usage = TokenUsage()
    notes: list[str] = []
    llm_ms = 0.0
    for attempt in (1, 2):
        try:
            completion = await llm.complete_json(
                messages, schema=schema, schema_name="plan", max_tokens=max_tokens, timeout_s=timeout_s
            )
        except LLMError as exc:
            notes.append(f"plan attempt {attempt}: {exc}")
            break  # a failed call (timeout, endpoint down) is not retried: the deadline matters more
        llm_ms += completion.duration_ms
        usage = TokenUsage(
            input_tokens=usage.input_tokens + completion.usage.input_tokens,
            output_tokens=usage.output_tokens + completion.usage.output_tokens,
        )
        try:
            plan = Plan.model_validate(parse_json_object(completion.text))
            return PlanOutcome(check_plan(plan, tenant, question), usage, notes, llm_ms=llm_ms)
        except (LLMError, ValidationError, ValueError) as exc:
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            notes.append(f"plan attempt {attempt} was invalid: {error}")
            messages = [
                *messages,
                {"role": "assistant", "content": completion.text[:2000]},
                {"role": "user", "content": f"That plan is invalid: {error}. Answer again with valid JSON."},
            ]
    notes.append("used the tenant's default plan")
    steps: list[PlanStep] = tenant.fallback_plan()
    tasks = [PlannedTask(s.specialist, s.question.format(question=question)) for s in steps]
    return PlanOutcome(tasks, usage, notes, used_default=True, llm_ms=llm_ms)
