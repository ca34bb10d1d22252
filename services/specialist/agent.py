"""One specialist answering one task: context, prompt, an engine call with the task's adapter, hand-off.

The answer is asked for as JSON (`{"answer": ..., "handoff": ...}`) through the engine's
constrained decoding (TGI's `grammar`, OpenAI's `response_format`), so even a small model produces
something parseable, and `handoff` can only name a specialist this one is allowed to hand off to.
A user's pair of adapters is sent as its published stack (shared/stacks.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode

from loraswarm.services.specialist.engines import Completion, Engine, EngineError
from loraswarm.shared.answer_checks import supported_by
from loraswarm.shared.envelope import utc_now
from loraswarm.shared.events import Citation, Handoff, Passage, SpecialistResult, SpecialistTask
from loraswarm.shared.metrics import count_tokens
from loraswarm.shared.prompts import specialist_prompt
from loraswarm.shared.stacks import served_candidates
from loraswarm.shared.tenants import SpecialistConfig, TenantConfig
from loraswarm.shared.tracing import tracer

log = logging.getLogger(__name__)

Retrieve = Callable[[SpecialistTask, SpecialistConfig], Awaitable[list[Passage]]]


def handoff_targets(spec: SpecialistConfig, task: SpecialistTask, tenant: TenantConfig) -> list[str]:
    """Whom this task may hand off to: the specialist's hand-offs, within the hop limit, minus
    those already asked in this request (handing off to them would repeat their work)."""
    if task.hop >= tenant.limits.max_handoffs:
        return []
    return [name for name in spec.handoffs if name not in task.peers and name != task.specialist]


def answer_schema(spec: SpecialistConfig, targets: list[str]) -> dict[str, Any]:
    handoff: dict[str, Any] = {"type": "null"}
    if targets:
        handoff = {"anyOf": [{"type": "null"}, {"type": "string", "enum": targets}]}
    # About 3 characters a token: the grammar closes the answer while `max_new_tokens` still has
    # room for the `handoff` field, instead of the budget cutting the JSON off mid-answer.
    longest = max(40, 3 * spec.max_new_tokens)
    return {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": longest}, "handoff": handoff},
        "required": ["answer", "handoff"],
        "additionalProperties": False,
    }


def build_prompt(
    spec: SpecialistConfig,
    task: SpecialistTask,
    passages: list[Passage],
    targets: list[str],
    tokenizer_chat: bool,
) -> str:
    # One definition, shared with the trainer's retrieval-aware examples (shared/prompts.py).
    return specialist_prompt(
        spec.instructions, task.question, [p.text for p in passages], targets, tokenizer_chat=tokenizer_chat
    )


def cited(answer: str, passages: list[Passage], question: str) -> list[Citation]:
    """Only the passages that state something the answer says (`checks.supported_by`): none by
    default, whatever the specialist was given."""
    return [passages[i].citation for i in supported_by(answer, [p.text for p in passages], question)]


@dataclass(frozen=True)
class TaskOutcome:
    result: SpecialistResult
    handoff: SpecialistTask | None


def _parse(text: str) -> tuple[str, str | None]:
    try:
        value = json.loads(text[text.find("{") : text.rfind("}") + 1])
        answer = str(value.get("answer", "")).strip()
        handoff = value.get("handoff")
        return answer, handoff if isinstance(handoff, str) else None
    except (ValueError, AttributeError):
        return _cut_off_answer(text), None


_ANSWER_START = re.compile(r'^\s*\{\s*"answer"\s*:\s*"((?:[^"\\]|\\.)*)')


def _cut_off_answer(text: str) -> str:
    """The answer of JSON that `max_new_tokens` cut off (`{"answer": "...`), without the JSON."""
    match = _ANSWER_START.match(text)
    if match is None:
        return text.strip()
    try:
        return str(json.loads(f'"{match.group(1)}"')).strip()
    except ValueError:  # cut inside an escape sequence
        return match.group(1).strip()


async def _generate(
    engine: Engine,
    prompt: str,
    spec: SpecialistConfig,
    adapter_id: str | None,
    targets: list[str],
    timeout_s: float,
) -> Completion | EngineError:
    """One engine call in its GenAI span: the completion, or the engine's error."""
    with tracer().start_as_current_span(
        f"text_completion {adapter_id or 'base'}",
        kind=SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": "text_completion",
            "gen_ai.provider.name": engine.provider,
            "gen_ai.request.model": adapter_id or "base",
            "gen_ai.request.max_tokens": spec.max_new_tokens,
            "gen_ai.agent.name": spec.name,
        },
    ) as span:
        try:
            completion = await engine.complete(
                prompt,
                adapter_id,
                max_tokens=spec.max_new_tokens,
                schema=answer_schema(spec, targets),
                timeout_s=timeout_s,
            )
        except EngineError as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            span.set_attribute("error.type", exc.kind)
            return exc
        span.set_attribute("gen_ai.usage.input_tokens", completion.usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", completion.usage.output_tokens)
        if completion.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [completion.finish_reason])
        return completion


async def run_task(
    task: SpecialistTask,
    tenant: TenantConfig,
    engine: Engine,
    retrieve: Retrieve | None,
    *,
    timeout_s: float,
    now: Callable[[], datetime] = utc_now,
) -> TaskOutcome:
    started = time.perf_counter()
    spec = tenant.specialist(task.specialist)

    def result(**fields: Any) -> SpecialistResult:
        fields.setdefault("adapter_ids", task.adapter_ids)
        return task.caused(
            SpecialistResult,
            specialist=task.specialist,
            task_id=task.event_id,
            duration_ms=(time.perf_counter() - started) * 1000,
            **fields,
        )

    if spec is None:
        return TaskOutcome(
            result(error=f"tenant {task.tenant_id} has no specialist {task.specialist!r}"), None
        )
    left = (task.deadline_at - now()).total_seconds()
    if left <= 0:
        return TaskOutcome(result(error="the task's deadline passed before it started"), None)

    passages = list(task.context)
    if retrieve is not None:
        try:
            extra = await asyncio.wait_for(retrieve(task, spec), timeout=min(left, 5.0))
        except Exception:  # retrieval is a bonus: the planner already sent context
            extra = []
        known = {(p.citation.doc_id, p.citation.position) for p in passages}
        passages += [p for p in extra if (p.citation.doc_id, p.citation.position) not in known]
    passages = passages[:6]

    targets = handoff_targets(spec, task, tenant)
    prompt = build_prompt(spec, task, passages, targets, tokenizer_chat=True)
    # The user's published stack, else the company adapter alone, else the base model: an adapter
    # not (yet) published, or one the engine cannot serve, is said so (404 adapter_not_found,
    # 422 invalid_adapter, vLLM's 404; TGI would quietly use the base model), and the task is
    # answered with what exists, reporting the stack that really ran.
    candidates = served_candidates(tenant, list(task.adapter_ids))
    for served, adapter_ids in candidates:
        called = await _generate(engine, prompt, spec, served, targets, min(left, timeout_s))
        if not (isinstance(called, EngineError) and called.kind == "unknown_adapter" and served):
            break
        log.warning(
            "%s for %s (%s); answering with the next of %s", called, task.specialist, adapter_ids, candidates
        )
    if isinstance(called, EngineError):
        return TaskOutcome(
            result(error=f"the model call failed ({called.kind}): {called}", adapter_ids=adapter_ids), None
        )
    usage = called.usage
    count_tokens(
        "specialist",
        task.tenant_id,
        served or "base",
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
    )

    answer, handoff_to = _parse(called.text)
    citations = cited(answer, passages, task.question)
    if handoff_to and handoff_to in targets:
        other = tenant.specialist(handoff_to)
        assert other is not None  # the tenant config validates hand-off names
        follow = task.caused(
            SpecialistTask,
            specialist=other.name,
            question=task.question,
            adapter_ids=tenant.adapters_for(other, task.user_id),
            context=task.context,
            hop=task.hop + 1,
            peers=sorted({*task.peers, task.specialist}),
            deadline_at=task.deadline_at,
        )
        handoff = Handoff(
            task_id=follow.event_id,
            specialist=other.name,
            question=follow.question,
            adapter_ids=follow.adapter_ids,
            hop=follow.hop,
        )
        return TaskOutcome(
            result(
                answer=answer, citations=citations, usage=usage, handoffs=[handoff], adapter_ids=adapter_ids
            ),
            follow,
        )
    return TaskOutcome(result(answer=answer, citations=citations, usage=usage, adapter_ids=adapter_ids), None)
