"""Heterogeneous continuous batching is exact: a row gets its own adapters' deltas and nobody else's.

Every comparison is on raw logits, against the same request run alone and against peft itself
(peft's own LoRA layers with the same adapters active, on the same tokens). Tolerance: fp32 on the
CPU, logits agree within `LOGIT_TOL` (observed: <= 3e-5 alone vs batched, <= 5e-5 vs peft; another
tenant's adapter moves them by > 20).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
import torch
from peft import PeftModel

from loraswarm.services.model_server.engine import Generated
from loraswarm.services.model_server.schemas import GenerateParameters
from loraswarm.services.model_server.server import Generation, ModelServer, Prepared
from loraswarm.services.model_server.validation import validate
from tests.model_server.conftest import Served

LOGIT_TOL = 1e-3
PROMPT = "The three most important things when onboarding a new customer are"


async def prepare(
    server: ModelServer, prompt: str, adapters: tuple[str, ...] = (), *, max_new_tokens: int = 10
) -> Prepared:
    valid = validate(
        prompt,
        GenerateParameters(max_new_tokens=max_new_tokens),
        limits=server.limits,
        tokenizer=server.tokenizer,
    )
    tenant = adapters[0].split("/")[0] if adapters else None
    return await server.prepare(valid, adapters, tenant, record_logits=True)


async def run(server: ModelServer, prepared: Prepared, started: asyncio.Event | None = None) -> Generation:
    """Greedy generation through the engine, with every step's raw logits recorded."""
    result = Generation()
    async for event in server.stream(prepared):
        if started is not None:
            started.set()
        if not isinstance(event, Generated):
            continue
        assert event.logits is not None
        result.tokens.append(event.token)
        result.logits.append(event.logits)
        result.batch_sizes.append(event.batch_size)
        result.end = event.end
    return result


async def generate(
    server: ModelServer,
    prompt: str,
    adapters: tuple[str, ...] = (),
    *,
    max_new_tokens: int = 10,
    started: asyncio.Event | None = None,
) -> Generation:
    return await run(server, await prepare(server, prompt, adapters, max_new_tokens=max_new_tokens), started)


async def generate_together(
    server: ModelServer, requests: list[tuple[str, tuple[str, ...], int]]
) -> list[Generation]:
    """(prompt, adapters, max new tokens) each, submitted in one event-loop turn so they share a batch.

    Preparing loads adapters in worker threads, which finish in any order: a request whose
    adapters load late would join the batch a step later, and the test would not see the batch
    it arranged. So every request is prepared first, then all are streamed at once.
    """
    prepared = await asyncio.gather(*(prepare(server, p, a, max_new_tokens=n) for p, a, n in requests))
    return list(await asyncio.gather(*(run(server, r) for r in prepared)))


def ids(g: Generation) -> list[int]:
    return [t.id for t in g.tokens]


def logits(g: Generation) -> torch.Tensor:
    return torch.stack(g.logits)


def max_diff(a: Generation, b: Generation) -> float:
    n = min(len(a.logits), len(b.logits))
    return float((logits(a)[:n] - logits(b)[:n]).abs().max())


def peft_logits(
    served: Served, adapter_ids: list[str], prompt_ids: list[int], generated: list[int]
) -> torch.Tensor:
    """peft's own logits for each generated position (teacher forcing), all given adapters active."""
    base = copy.deepcopy(served.factory.base)
    model: Any = PeftModel.from_pretrained(base, served.store.resolve(adapter_ids[0]).path, adapter_name="a0")
    for i, adapter_id in enumerate(adapter_ids[1:], start=1):
        model.load_adapter(served.store.resolve(adapter_id).path, adapter_name=f"a{i}")
    model.base_model.set_adapter([f"a{i}" for i in range(len(adapter_ids))])
    sequence = torch.tensor([prompt_ids + generated[:-1]])
    with torch.no_grad():
        out: torch.Tensor = model(sequence).logits[0]  # (P + n - 1, V)
    return out[len(prompt_ids) - 1 :]


async def test_a_request_gives_the_same_tokens_and_logits_alone_and_in_a_busy_batch(served: Served) -> None:
    server = served.server
    alone = await generate(server, PROMPT, ("acme/support",))
    assert set(alone.batch_sizes) == {1}

    # Other tenants' requests (ranks 16, 32, 4, a stack and the base model) start first; ours
    # joins the running batch between their decode steps.
    started = asyncio.Event()
    others = [
        asyncio.create_task(
            generate(server, "Tell me about mergers", ("globex/support",), max_new_tokens=30, started=started)
        ),
        asyncio.create_task(
            generate(server, "Summarize the contract", ("initech/legal",), max_new_tokens=30)
        ),
        asyncio.create_task(generate(server, "Hi", ("acme/user-7",), max_new_tokens=30)),
        asyncio.create_task(
            generate(server, "Plan my week", ("acme/support", "acme/user-7"), max_new_tokens=30)
        ),
        asyncio.create_task(generate(server, "What is LoRA?", (), max_new_tokens=30)),
    ]
    await started.wait()
    busy = await generate(server, PROMPT, ("acme/support",))
    await asyncio.gather(*others)

    assert max(busy.batch_sizes) >= 4, f"did not share a batch: {busy.batch_sizes}"
    assert ids(busy) == ids(alone)
    assert max_diff(busy, alone) < LOGIT_TOL


async def test_an_adapter_changes_the_output_and_matches_peft(served: Served) -> None:
    server = served.server
    base = await generate(server, PROMPT)
    tuned = await generate(server, PROMPT, ("acme/support",))
    assert ids(tuned) != ids(base)
    assert max_diff(tuned, base) > 1.0

    prompt_ids = server.tokenizer(PROMPT)["input_ids"]
    reference = peft_logits(served, ["acme/support"], prompt_ids, ids(tuned))
    assert float((logits(tuned) - reference).abs().max()) < LOGIT_TOL


async def test_tenants_in_one_batch_never_get_each_others_deltas(served: Served) -> None:
    server = served.server
    pairs = [("acme/support",), ("globex/support",), ("initech/legal",)]
    alone = {p: await generate(server, PROMPT, p) for p in pairs}
    together = await generate_together(server, [(PROMPT, p, 10) for p in pairs])
    prompt_ids = server.tokenizer(PROMPT)["input_ids"]
    for pair, mixed in zip(pairs, together, strict=True):
        assert max(mixed.batch_sizes) == len(pairs), "the three tenants did not run in one forward pass"
        assert ids(mixed) == ids(alone[pair])
        assert max_diff(mixed, alone[pair]) < LOGIT_TOL
        reference = peft_logits(served, list(pair), prompt_ids, ids(mixed))
        assert float((logits(mixed) - reference).abs().max()) < LOGIT_TOL
        for other in pairs:
            if other != pair:
                # The same prompt under another tenant's adapter is far away: no delta leaked in.
                assert max_diff(mixed, alone[other]) > 100 * LOGIT_TOL


async def test_a_stack_applies_the_company_and_the_user_delta_together(served: Served) -> None:
    server = served.server
    stack = ("acme/support", "acme/user-7")
    stacked = await generate(server, PROMPT, stack)
    company = await generate(server, PROMPT, stack[:1])
    assert max_diff(stacked, company) > 100 * LOGIT_TOL
    prompt_ids = server.tokenizer(PROMPT)["input_ids"]
    reference = peft_logits(served, list(stack), prompt_ids, ids(stacked))
    assert float((logits(stacked) - reference).abs().max()) < LOGIT_TOL


@pytest.mark.parametrize("n", [2, 7])
async def test_many_rows_of_one_adapter_and_base_rows_agree_with_running_alone(
    served: Served, n: int
) -> None:
    server = served.server
    prompts = [
        f"Question {i}: what should we do about {topic}?" for i, topic in enumerate(["sales", "churn"] * n)
    ][:n]
    adapters = [("globex/support",) if i % 2 else () for i in range(n)]
    alone = [await generate(server, p, a, max_new_tokens=6) for p, a in zip(prompts, adapters, strict=True)]
    together = await generate_together(server, [(p, a, 6) for p, a in zip(prompts, adapters, strict=True)])
    for a, t in zip(alone, together, strict=True):
        assert ids(a) == ids(t)
        assert max_diff(a, t) < LOGIT_TOL


async def test_rows_moved_into_freed_slots_keep_their_own_cache_and_adapters(served: Served) -> None:
    """Short requests finish first; the long ones move down into their slots and must not notice."""
    server = served.server
    plan = [
        (("acme/support",), 3),
        (("globex/support",), 3),
        (("initech/legal",), 12),
        (("acme/support", "acme/user-7"), 12),
    ]
    alone = [await generate(server, PROMPT, a, max_new_tokens=n) for a, n in plan]
    together = await generate_together(server, [(PROMPT, a, n) for a, n in plan])
    assert (
        max(together[2].batch_sizes) == 4 and together[2].batch_sizes[-1] == 2
    )  # ran with all, ended in pairs
    for a, t in zip(alone, together, strict=True):
        assert ids(a) == ids(t)
        assert max_diff(a, t) < LOGIT_TOL


async def test_tgis_waiting_rule_holds_a_lone_arrival_at_most_max_waiting_steps(served: Served) -> None:
    engine = served.server.engine
    saved = engine.max_waiting_steps, engine.waiting_served_ratio
    engine.max_waiting_steps, engine.waiting_served_ratio = 3, 1.2
    try:
        started = asyncio.Event()
        long = asyncio.create_task(
            generate(served.server, PROMPT, ("globex/support",), max_new_tokens=24, started=started)
        )
        await started.wait()
        valid = validate(
            "Hi",
            GenerateParameters(max_new_tokens=2),
            limits=served.server.limits,
            tokenizer=served.server.tokenizer,
        )
        prepared = await served.server.prepare(valid, (), None)
        submitted_at = engine.stats.steps
        async for _ in served.server.stream(prepared):
            first_token_at = engine.stats.steps
            break
        await long
    finally:
        engine.max_waiting_steps, engine.waiting_served_ratio = saved
    # 1 running, 1 waiting (< 1.2 x 1): held for 3 decode steps, then prefilled (the 4th step's slot).
    assert 3 <= first_token_at - submitted_at <= 5
