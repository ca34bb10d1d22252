"""Asking the primary LLM for a plan: which specialists, with which question each.

The plan comes back as structured output (a JSON schema built from `Plan`, with the tenant's
specialist names as an enum). An invalid plan, or one naming unknown specialists, is asked for
once more with the error shown to the model; after that the tenant's default plan is used and
the completed event says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from loraswarm.services.planner.llm import LLMError, PrimaryLLM, parse_json_object
from loraswarm.shared.events import Passage, TokenUsage
from loraswarm.shared.tenants import PlanStep, TenantConfig


# The limits below become `maxLength`/`maxItems` in the JSON schema, and the model server's grammar
# enforces them token by token: a small model that rambles inside a string is made to close it, so
# a plan of `max_specialists` tasks fits in `plan_max_tokens` and comes back as valid JSON instead
# of being cut off (and retried, and replaced by the default plan).
class PlannedTask(BaseModel):
    specialist: str = Field(description="One of the tenant's specialists.")
    question: str = Field(min_length=1, max_length=240, description="What to ask that specialist.")


class Plan(BaseModel):
    tasks: list[PlannedTask] = Field(min_length=1)


def plan_schema(tenant: TenantConfig) -> dict[str, Any]:
    schema = Plan.model_json_schema()
    task = schema["$defs"]["PlannedTask"]
    task["properties"]["specialist"]["enum"] = [s.name for s in tenant.specialists]
    schema["properties"]["tasks"]["maxItems"] = tenant.limits.max_specialists
    task["additionalProperties"] = False
    schema["additionalProperties"] = False
    return schema


def check_plan(plan: Plan, tenant: TenantConfig) -> list[PlannedTask]:
    """The plan's tasks, or `ValueError` naming what is wrong with them."""
    unknown = [t.specialist for t in plan.tasks if tenant.specialist(t.specialist) is None]
    if unknown:
        known = ", ".join(s.name for s in tenant.specialists)
        raise ValueError(f"unknown specialist(s) {unknown}; choose from: {known}")
    seen: set[str] = set()
    tasks = []
    for task in plan.tasks:
        if task.specialist not in seen:  # one task per specialist; duplicates add nothing
            seen.add(task.specialist)
            tasks.append(task)
    return tasks[: tenant.limits.max_specialists]


def planning_messages(tenant: TenantConfig, question: str, passages: list[Passage]) -> list[dict[str, str]]:
    """Short and single-purpose, for the 135M default: choose specialists, nothing else."""
    roster = "\n".join(f"- {s.name}: {s.description[:100]}" for s in tenant.specialists)
    context = "\n".join(f"- {p.text[:160]}" for p in passages[:3]) or "- (no documents found)"
    return [
        {
            "role": "system",
            "content": f"Pick at most {tenant.limits.max_specialists} specialists for the question and give "
            f"each its question. Specialists:\n{roster}\nAnswer with JSON only.",
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
    if len(tenant.specialists) == 1:
        # One specialist: nothing to choose, and its question is the user's. No LLM call.
        only = tenant.specialists[0]
        return PlanOutcome([PlannedTask(specialist=only.name, question=question)], TokenUsage())
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
            return PlanOutcome(check_plan(plan, tenant), usage, notes, llm_ms=llm_ms)
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
    tasks = [
        PlannedTask(specialist=s.specialist, question=s.question.format(question=question)) for s in steps
    ]
    return PlanOutcome(tasks, usage, notes, used_default=True, llm_ms=llm_ms)
