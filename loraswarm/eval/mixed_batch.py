"""Serving tokens/s with LoRA rows and LLaMA-Adapter rows in the same batches (issue 19's cost).

The conditions run one after another, so each one's tokens/s is that of a batch of one method.
What a user running both methods pays is the batch that mixes them: here the same prompts (the
run's closed-book prompts, up to `MAX_REQUESTS`) are sent to the model server in four rounds —
every row on its tenant's company LoRA, every row on its company LLaMA-Adapter, the rows
alternating between the two, and the base model — `concurrency` at a time, each round's tokens
over its wall time. The rounds run twice, the second time in reverse order (A B C D D C B A), so a
drift of the machine's speed falls on all of them alike; each round's figures add both passes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from loraswarm.eval.conditions import EvalContext, build_prompt, tenant_clients
from loraswarm.eval.questions import EvalQuestion

RoundName = Literal["lora", "llama_adapter", "mixed", "base"]
ROUNDS: tuple[RoundName, ...] = ("lora", "llama_adapter", "mixed", "base")
LABELS: dict[RoundName, str] = {
    "lora": "LoRA rows only",
    "llama_adapter": "LLaMA-Adapter rows only",
    "mixed": "LoRA and LLaMA-Adapter rows alternating",
    "base": "base model rows only",
}
MAX_REQUESTS = 16


@dataclass
class RoundFigures:
    requests: int = 0
    tokens: int = 0
    seconds: float = 0.0
    lora_rows: int = 0  # requests sent with the LoRA, the LLaMA-Adapter, no adapter
    llama_rows: int = 0
    base_rows: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


def pairs(ctx: EvalContext, questions: list[EvalQuestion]) -> list[tuple[EvalQuestion, str, str]]:
    """(question, its tenant's company LoRA, its tenant's company LLaMA-Adapter), where both were
    published, tenants taking turns so that every tenant's adapters are in the batch."""
    usable = [
        (q, ctx.adapters[(q.tenant, None)], ctx.llama_adapters[(q.tenant, None)])
        for q in questions
        if (q.tenant, None) in ctx.adapters and (q.tenant, None) in ctx.llama_adapters
    ]
    by_tenant: dict[str, list[tuple[EvalQuestion, str, str]]] = {}
    for item in usable:
        by_tenant.setdefault(item[0].tenant, []).append(item)
    interleaved = [x for group in zip(*by_tenant.values(), strict=False) for x in group]
    rest = [x for x in usable if x not in interleaved]
    return (interleaved + rest)[:MAX_REQUESTS]


def adapter_for(name: RoundName, index: int, lora: str, llama: str) -> str | None:
    if name == "base":
        return None
    if name == "mixed":
        return lora if index % 2 == 0 else llama
    return lora if name == "lora" else llama


async def one_round(
    name: RoundName, items: list[tuple[EvalQuestion, str, str]], ctx: EvalContext
) -> RoundFigures:
    """Every item's prompt with this round's adapter, `ctx.concurrency` at a time."""
    clients = tenant_clients(ctx, {q.tenant for q, _, _ in items})
    gate = asyncio.Semaphore(ctx.concurrency)
    figures = RoundFigures(requests=len(items))

    async def one(index: int, q: EvalQuestion, lora: str, llama: str) -> int:
        adapter = adapter_for(name, index, lora, llama)
        figures.lora_rows += adapter == lora
        figures.llama_rows += adapter == llama
        figures.base_rows += adapter is None
        async with gate:
            output = await clients[q.tenant].text_generation(
                build_prompt(q, []),
                adapter_id=adapter,
                max_new_tokens=ctx.max_new_tokens[q.kind],
                return_full_text=False,
                details=True,
            )
        return int(output.details.generated_tokens) if output.details else 0

    started = time.perf_counter()
    try:
        tokens = await asyncio.gather(*(one(i, *item) for i, item in enumerate(items)))
    finally:
        for client in clients.values():
            await client.close()  # type: ignore[no-untyped-call]
    figures.seconds = time.perf_counter() - started
    figures.tokens = sum(tokens)
    return figures


async def measure(ctx: EvalContext, questions: list[EvalQuestion]) -> dict[str, Any]:
    """Each round's figures over both passes (see the module docstring); {} when no tenant has
    both a published company LoRA and a published company LLaMA-Adapter."""
    items = pairs(ctx, questions)
    if not items:
        return {}
    totals = {name: RoundFigures() for name in ROUNDS}
    for name in (*ROUNDS, *reversed(ROUNDS)):
        got = await one_round(name, items, ctx)
        total = totals[name]
        for key in ("requests", "tokens", "lora_rows", "llama_rows", "base_rows"):
            setattr(total, key, getattr(total, key) + getattr(got, key))
        total.seconds += got.seconds
    return {
        "prompts": len(items),
        "tenants": len({q.tenant for q, _, _ in items}),
        "concurrency": ctx.concurrency,
        "rounds": {name: asdict(f) | {"tokens_per_s": f.tokens_per_s} for name, f in totals.items()},
    }


def section_lines(mixed: dict[str, Any]) -> list[str]:
    """The mixed-batch table of the llama_adapter section, with the ratio to the LoRA-only round."""
    if not mixed:
        return ["", "Mixed batches: not measured (no tenant had both company adapters published)."]
    rounds = mixed["rounds"]
    lora = rounds["lora"]["tokens_per_s"]
    lines = [
        "",
        f"Serving in mixed batches (the same {mixed['prompts']} closed-book prompts of {mixed['tenants']} "
        f"tenant(s) per round, {mixed['concurrency']} at a time on the model server; each round run twice, "
        "A B C D D C B A, and its figures add both passes):",
        "",
        "| rows in the batch | requests | tokens | seconds | tokens/s | vs LoRA rows only |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ROUNDS:
        r = rounds[name]
        lines.append(
            f"| {LABELS[name]} | {r['requests']} | {r['tokens']} | {r['seconds']:.1f} | "
            f"{r['tokens_per_s']:.1f} | {r['tokens_per_s'] / lora:.2f} |"
        )
    return lines
