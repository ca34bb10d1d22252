"""One specialist answering one task: context, prompt, a TGI call with the task's adapter, hand-off.

The answer is asked for as JSON (`{"answer": ..., "handoff": ...}`) through TGI's `grammar`
parameter, so even a small model produces something parseable, and `handoff` can only name a
specialist this one is allowed to hand off to.
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

from huggingface_hub import AsyncInferenceClient, TextGenerationInputGrammarType
from opentelemetry.trace import SpanKind, Status, StatusCode

from loraswarm.shared.answer_checks import supported_by
from loraswarm.shared.envelope import utc_now
from loraswarm.shared.events import Citation, Handoff, Passage, SpecialistResult, SpecialistTask, TokenUsage
from loraswarm.shared.metrics import count_tokens
from loraswarm.shared.prompts import specialist_prompt
from loraswarm.shared.tenants import SpecialistConfig, TenantConfig
from loraswarm.shared.tracing import tracer

log = logging.getLogger(__name__)

Retrieve = Callable[[SpecialistTask, SpecialistConfig], Awaitable[list[Passage]]]


def adapter_stack_id(adapter_ids: list[str]) -> str | None:
    """The `adapter_id` TGI receives: one adapter, or a stack joined with `+` (company first)."""
    return "+".join(adapter_ids) if adapter_ids else None


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


@dataclass(frozen=True)
class _AdapterNotFound:
    reason: str


# Answers that mean "this adapter cannot be served here", not "the call failed": the model
# server's 404 `adapter_not_found` and 422 `invalid_adapter` (a LLaMA-Adapter, another base model,
# a malformed file), and vLLM's 404 `NotFoundError` for a name it does not know.
_CANNOT_SERVE = {(404, "adapter_not_found"), (422, "invalid_adapter"), (404, "NotFoundError")}


def _adapter_not_found(exc: BaseException) -> bool:
    """Whether the server said it cannot serve the adapter (huggingface_hub keeps the HTTP error
    as the cause): the specialist then falls back to fewer adapters, as when one is missing."""
    response = getattr(exc.__cause__, "response", None)
    if response is None or response.status_code not in {status for status, _ in _CANNOT_SERVE}:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    error = body.get("error")
    kind = error.get("type") if isinstance(error, dict) else body.get("error_type")
    return (response.status_code, kind) in _CANNOT_SERVE


async def _generate(
    tgi: AsyncInferenceClient,
    prompt: str,
    spec: SpecialistConfig,
    adapter_ids: list[str],
    targets: list[str],
    timeout_s: float,
) -> tuple[Any, TokenUsage] | _AdapterNotFound | str:
    """One TGI call in its GenAI span: (output, usage), a missing adapter, or why it failed."""
    adapter_id = adapter_stack_id(adapter_ids)
    with tracer().start_as_current_span(
        f"text_completion {adapter_id or 'base'}",
        kind=SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": "text_completion",
            "gen_ai.provider.name": "huggingface.tgi",
            "gen_ai.request.model": adapter_id or "base",
            "gen_ai.request.max_tokens": spec.max_new_tokens,
            "gen_ai.agent.name": spec.name,
        },
    ) as span:
        try:
            output = await asyncio.wait_for(
                tgi.text_generation(
                    prompt,
                    adapter_id=adapter_id,
                    max_new_tokens=spec.max_new_tokens,
                    # TGI's POST / echoes the prompt by default; a cut-off JSON answer would then
                    # hand the prompt (documents included) on as the specialist's answer.
                    return_full_text=False,
                    details=True,
                    decoder_input_details=True,
                    grammar=TextGenerationInputGrammarType(type="json", value=answer_schema(spec, targets)),
                ),
                timeout=timeout_s,
            )
        except Exception as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            span.set_status(Status(StatusCode.ERROR, reason))
            span.set_attribute("error.type", type(exc).__name__)
            if adapter_ids and _adapter_not_found(exc):
                return _AdapterNotFound(str(exc))
            return reason
        details = getattr(output, "details", None)
        usage = TokenUsage(
            input_tokens=len(getattr(details, "prefill", None) or []),
            output_tokens=int(getattr(details, "generated_tokens", 0) or 0),
        )
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        if details is not None and getattr(details, "finish_reason", None):
            span.set_attribute("gen_ai.response.finish_reasons", [str(details.finish_reason)])
        return output, usage


async def run_task(
    task: SpecialistTask,
    tenant: TenantConfig,
    tgi: AsyncInferenceClient,
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
    adapter_ids = list(task.adapter_ids)
    while True:
        called = await _generate(tgi, prompt, spec, adapter_ids, targets, min(left, timeout_s))
        if not isinstance(called, _AdapterNotFound):
            break
        # An adapter not (yet) published, or one it cannot serve: TGI would quietly use the base
        # model; this server says so (404 adapter_not_found, 422 invalid_adapter). Answer with what exists — the company adapter alone, then
        # the base model — and report the stack that really ran.
        fewer = adapter_ids[:1] if len(adapter_ids) > 1 else []
        log.warning("%s for %s; answering with %s", called.reason, task.specialist, fewer or "the base model")
        adapter_ids = fewer
    if isinstance(called, str):
        return TaskOutcome(result(error=f"the model call failed: {called}", adapter_ids=adapter_ids), None)
    output, usage = called
    count_tokens(
        "specialist",
        task.tenant_id,
        adapter_stack_id(adapter_ids) or "base",
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
    )

    answer, handoff_to = _parse(output.generated_text)
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
