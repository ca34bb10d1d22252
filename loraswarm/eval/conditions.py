"""The conditions: one way each of answering the same questions with the same base model.

| condition      | adapters sent to the model server     | retrieval            | path                |
|----------------|---------------------------------------|----------------------|---------------------|
| base           | none                                  | none                 | TGI `/generate`     |
| rag            | none                                  | tenant's documents   | TGI `/generate`     |
| company        | `<tenant>/company`                    | none                 | TGI `/generate`     |
| company_user   | `<tenant>/company+<tenant>/user-<u>`  | none                 | TGI `/generate`     |
| adapter_rag    | as company_user                       | tenant's documents   | TGI `/generate`     |
| swarm          | the tenant's specialists choose       | planner + specialists| Kafka events        |
| swarm_legacy   | as swarm                              | as swarm             | as swarm, with the composer before issue 14 (the baseline arm) |
| raw_company_user | `raw-company+raw-user-<u>`: trained on raw text (the recipe before issue 13) | none | TGI `/generate` |
| raw_adapter_rag  | as raw_company_user                 | tenant's documents   | TGI `/generate`     |

LLaMA-Adapter conditions (issue 19), the same data and steps with the other method:

| condition      | adapters sent to the model server     | retrieval            | path                |
|----------------|---------------------------------------|----------------------|---------------------|
| llama_company  | `<tenant>/company-llama`              | none                 | TGI `/generate`     |
| llama_user     | `<tenant>/company+<tenant>/llama-user-<u>` | none            | TGI `/generate`     |
| llama_rag      | as llama_user                         | tenant's documents   | TGI `/generate`     |
| llama_swarm    | as swarm, users' adapters LLaMA-Adapters | planner + specialists | Kafka events   |

A user's LLaMA-Adapter is trained on top of the company LoRA (the one stack both the trainer and
the model server handle exactly: a stack holds at most one LLaMA-Adapter), so llama_user,
llama_rag and llama_swarm differ from their LoRA twins in the user's adapter only; llama_company
compares the company adapter itself.

A company question (no user) has no user adapter: company_user and adapter_rag use the company
adapter alone for it. Every direct condition uses the same prompt, only with or without the
documents, and greedy decoding, so what differs is what the condition uses — nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from huggingface_hub import AsyncInferenceClient

from loraswarm.eval.questions import EvalQuestion, Kind
from loraswarm.shared.events import Passage, RecommendationCompleted, RecommendationFailed
from loraswarm.shared.settings import Settings

ConditionName = Literal[
    "base",
    "rag",
    "company",
    "company_user",
    "adapter_rag",
    "swarm",
    "swarm_legacy",
    "raw_company_user",
    "raw_adapter_rag",
    "llama_company",
    "llama_user",
    "llama_rag",
    "llama_swarm",
]
CONDITIONS: tuple[ConditionName, ...] = (
    "base", "rag", "company", "company_user", "adapter_rag", "swarm", "raw_company_user", "raw_adapter_rag"
)  # fmt: skip
# LLaMA-Adapter next to LoRA (issue 19): each with its LoRA twin.
LLAMA_TWINS: dict[ConditionName, ConditionName] = {
    "llama_company": "company",
    "llama_user": "company_user",
    "llama_rag": "adapter_rag",
    "llama_swarm": "swarm",
}
ALL_CONDITIONS: tuple[ConditionName, ...] = (*CONDITIONS, "swarm_legacy", *LLAMA_TWINS)


@dataclass(frozen=True)
class Condition:
    name: ConditionName
    label: str
    adapters: Literal["none", "company", "stack"]
    rag: bool
    swarm: bool = False
    composer: Literal["extractive", "legacy"] = "extractive"
    # `raw`: adapters trained on raw document text only (the training-set builder off): the
    # arm the builder's adapters are measured against, in the same run.
    recipe: Literal["builder", "raw"] = "builder"
    method: Literal["lora", "llama_adapter"] = "lora"  # of the question's own adapter


SPECS: dict[ConditionName, Condition] = {
    "base": Condition("base", "base model alone", "none", rag=False),
    "rag": Condition("rag", "base + RAG", "none", rag=True),
    "company": Condition("company", "company adapter", "company", rag=False),
    "company_user": Condition("company_user", "company + user adapter", "stack", rag=False),
    "adapter_rag": Condition("adapter_rag", "company + user adapter + RAG", "stack", rag=True),
    "swarm": Condition("swarm", "full swarm (planner + specialists)", "stack", rag=True, swarm=True),
    "swarm_legacy": Condition(
        "swarm_legacy",
        "full swarm, legacy composer (baseline)",
        "stack",
        rag=True,
        swarm=True,
        composer="legacy",
    ),
    # ---- the raw-text arm (issue 13)
    "raw_company_user": Condition(
        "raw_company_user", "company + user adapter, raw-text recipe", "stack", rag=False, recipe="raw"
    ),
    "raw_adapter_rag": Condition(
        "raw_adapter_rag", "company + user adapter, raw-text recipe, + RAG", "stack", rag=True, recipe="raw"
    ),
    # LLaMA-Adapter (issue 19).
    "llama_company": Condition(
        "llama_company", "company LLaMA-Adapter", "company", rag=False, method="llama_adapter"
    ),
    "llama_user": Condition(
        "llama_user", "company LoRA + user LLaMA-Adapter", "stack", rag=False, method="llama_adapter"
    ),
    "llama_rag": Condition(
        "llama_rag", "company LoRA + user LLaMA-Adapter + RAG", "stack", rag=True, method="llama_adapter"
    ),
    "llama_swarm": Condition(
        "llama_swarm",
        "full swarm, users' LLaMA-Adapters",
        "stack",
        rag=True,
        swarm=True,
        method="llama_adapter",
    ),
}

LLAMA_USER_PREFIX = "llama-user-"  # a user's LLaMA-Adapter is <tenant>/llama-user-<user>


def llama_tenants_dir(tenants_dir: Path) -> Path:
    """The tenant configurations of the llama_swarm condition (users' adapters: LLaMA-Adapters)."""
    return tenants_dir.with_name(tenants_dir.name + "-llama")


@dataclass
class Answer:
    question_id: str
    condition: ConditionName
    text: str = ""
    latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    adapter_id: str | None = None  # what this condition asked the model server for (direct paths)
    retrieved: int = 0  # passages put into the prompt (direct paths)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    passages: list[str] = field(default_factory=list)  # the texts the answer was given
    cited: list[str] = field(default_factory=list)  # the texts of the passages it cites


@dataclass
class EvalContext:
    """What every condition shares: the settings, the served model and the published adapters."""

    settings: Settings
    model_url: str
    adapters: dict[tuple[str, str | None], str]  # (tenant, None) → company adapter; (tenant, user) → user's
    max_new_tokens: dict[Kind, int]
    concurrency: int
    k: int = 4
    swarm_deadline_s: float = 900.0
    raw_adapters: dict[tuple[str, str | None], str] = field(default_factory=dict)  # the raw-text arm's
    # The LLaMA-Adapters, keyed like `adapters` (issue 19's conditions).
    llama_adapters: dict[tuple[str, str | None], str] = field(default_factory=dict)


def adapter_stack(condition: Condition, question: EvalQuestion, ctx: EvalContext) -> list[str] | None:
    """The adapters to send, or None when one the condition needs was not published."""
    if condition.adapters == "none":
        return []
    llama = condition.method == "llama_adapter"
    if llama and condition.adapters == "company":
        own = ctx.llama_adapters.get((question.tenant, None))
        return None if own is None else [own]
    adapters = ctx.raw_adapters if condition.recipe == "raw" else ctx.adapters
    company = adapters.get((question.tenant, None))
    if company is None:
        return None
    if condition.adapters == "company" or question.user is None:
        return [company]
    user = (ctx.llama_adapters if llama else adapters).get((question.tenant, question.user))
    return None if user is None else [company, user]


_INSTRUCTIONS: dict[Kind, str] = {
    "fact": "Answer in one short sentence.",
    "process": "List the steps in order, one per line.",
    "style": "Write the reply itself, following the company's writing rules.",
}


def build_prompt(question: EvalQuestion, passages: list[Passage]) -> str:
    """ChatML (the default base model's template); the documents only when the condition retrieves."""
    who = f" You are talking to {question.user}, who works there." if question.user else ""
    system = f"You are the assistant of the company {question.tenant}.{who} {_INSTRUCTIONS[question.kind]}"
    user = question.question
    if passages:
        docs = "\n".join(f"[{i}] {p.text}" for i, p in enumerate(passages, 1))
        user = f"Documents:\n{docs}\n\nQuestion: {question.question}"
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


async def _direct(
    condition: Condition, q: EvalQuestion, ctx: EvalContext, client: AsyncInferenceClient
) -> Answer:
    from loraswarm.shared.retrieval import search

    answer = Answer(q.id, condition.name)
    stack = adapter_stack(condition, q, ctx)
    if stack is None:
        answer.error = "an adapter this condition needs was not published (see the training table)"
        return answer
    answer.adapter_id = "+".join(stack) or None
    started = time.perf_counter()
    passages: list[Passage] = []
    if condition.rag:
        passages = await asyncio.to_thread(search, ctx.settings, q.tenant, q.user, q.question, ctx.k)
    answer.retrieved = len(passages)
    answer.passages = [p.text for p in passages]
    try:
        output = await client.text_generation(
            build_prompt(q, passages),
            adapter_id=answer.adapter_id,
            max_new_tokens=ctx.max_new_tokens[q.kind],
            # POST / answers with the prompt included unless told not to (TGI's default, kept by
            # the model server): an echoed prompt would score the retrieved documents as the answer.
            return_full_text=False,
            details=True,
            decoder_input_details=True,
        )
    except Exception as exc:
        answer.error = f"{type(exc).__name__}: {exc}"
        return answer
    answer.latency_ms = (time.perf_counter() - started) * 1000
    answer.text = output.generated_text.strip()
    details = output.details
    answer.input_tokens = len(details.prefill or []) if details else 0
    answer.output_tokens = int(details.generated_tokens) if details else 0
    return answer


def tenant_clients(ctx: EvalContext, tenants: set[str]) -> dict[str, AsyncInferenceClient]:
    """One client per tenant: the model server binds adapters to the `X-Tenant-Id` header."""
    return {
        t: AsyncInferenceClient(
            base_url=ctx.model_url,
            timeout=ctx.settings.orchestration.llm_timeout_s,
            headers={"X-Tenant-Id": t},
        )
        for t in sorted(tenants)
    }


async def _direct_all(
    condition: Condition, questions: list[EvalQuestion], ctx: EvalContext, progress: Callable[[], None]
) -> list[Answer]:
    clients = tenant_clients(ctx, {q.tenant for q in questions})
    gate = asyncio.Semaphore(ctx.concurrency)

    async def one(q: EvalQuestion) -> Answer:
        async with gate:
            answer = await _direct(condition, q, ctx, clients[q.tenant])
        progress()
        return answer

    try:
        return list(await asyncio.gather(*(one(q) for q in questions)))
    finally:
        for client in clients.values():
            await client.close()  # type: ignore[no-untyped-call]


def _swarm_text(event: RecommendationCompleted) -> str:
    parts = [event.summary] if event.summary else []
    parts += [r.text for r in event.recommendations]
    return "\n".join(p.strip() for p in parts if p.strip())


async def _swarm_all(
    condition: Condition, questions: list[EvalQuestion], ctx: EvalContext, progress: Callable[[], None]
) -> list[Answer]:
    """Each question as a `recommendation.requested` event through planner and specialists."""
    from loraswarm.demo import swarm
    from loraswarm.shared.events import RecommendationRequested

    waiting: dict[str, asyncio.Future[RecommendationCompleted | RecommendationFailed]] = {}
    gate = asyncio.Semaphore(ctx.concurrency)

    settings = ctx.settings.model_copy(deep=True)
    settings.orchestration.composer = condition.composer
    if condition.method == "llama_adapter":
        settings.orchestration.tenants_dir = llama_tenants_dir(settings.orchestration.tenants_dir)
    async with swarm(settings) as client:

        @client.consumer(RecommendationCompleted, group="eval-client")
        async def completed(event: RecommendationCompleted) -> None:
            future = waiting.get(str(event.request_id))
            if future is not None and not future.done():
                future.set_result(event)

        @client.consumer(RecommendationFailed, group="eval-client-failed")
        async def failed(event: RecommendationFailed) -> None:
            future = waiting.get(str(event.request_id))
            if future is not None and not future.done():
                future.set_result(event)

        async def one(q: EvalQuestion) -> Answer:
            answer = Answer(q.id, condition.name)
            async with gate:
                request = RecommendationRequested(
                    tenant_id=q.tenant, user_id=q.user, question=q.question, deadline_s=ctx.swarm_deadline_s
                )
                future = asyncio.get_running_loop().create_future()
                waiting[str(request.request_id)] = future
                started = time.perf_counter()
                await client.publish(request)
                outcome: RecommendationCompleted | RecommendationFailed | None = None
                with contextlib.suppress(TimeoutError):
                    outcome = await asyncio.wait_for(future, timeout=ctx.swarm_deadline_s + 30)
                answer.latency_ms = (time.perf_counter() - started) * 1000
            progress()
            if outcome is None:
                answer.error = "no answer before the deadline"
            elif isinstance(outcome, RecommendationFailed):
                answer.error = f"failed ({outcome.code}): {outcome.reason}"
            else:
                answer.text = _swarm_text(outcome)
                answer.input_tokens = sum(u.input_tokens for u in outcome.usage_by_step.values())
                answer.output_tokens = sum(u.output_tokens for u in outcome.usage_by_step.values())
                stacks = sorted({"+".join(c.adapter_ids) or "base" for c in outcome.contributions})
                answer.adapter_id = ", ".join(stacks) or None
                answer.notes = list(outcome.notes)
                answer.passages = [p.text for p in outcome.passages]
                texts = {(p.citation.doc_id, p.citation.position): p.text for p in outcome.passages}
                keys = list(
                    dict.fromkeys(
                        (c.doc_id, c.position) for r in outcome.recommendations for c in r.citations
                    )
                )
                answer.cited = [texts.get(k, "") for k in keys]
            return answer

        async with client:
            return list(await asyncio.gather(*(one(q) for q in questions)))


async def run_condition(
    name: ConditionName,
    questions: list[EvalQuestion],
    ctx: EvalContext,
    progress: Callable[[], None] = lambda: None,
) -> list[Answer]:
    """Every question answered under one condition (the runner calls these one after another)."""
    condition = SPECS[name]
    if condition.swarm:
        return await _swarm_all(condition, questions, ctx, progress)
    return await _direct_all(condition, questions, ctx, progress)
