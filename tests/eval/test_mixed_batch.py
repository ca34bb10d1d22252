"""The LLaMA-Adapter section's mixed batches: what each round really sent to the real model server.

`loraswarm eval --quick` with a LoRA and a LLaMA-Adapter condition trains both company adapters on
the real model; `ModelServer.prepare` is watched where requests arrive, and `one_round` is wrapped
to know which round is running, so each request is charged to the round that made it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from loraswarm.cli import app
from loraswarm.eval import llama_adapter, mixed_batch
from loraswarm.eval.mixed_batch import adapter_for, pairs
from loraswarm.eval.questions import EvalQuestion
from loraswarm.services.model_server.server import ModelServer
from tests.eval.test_llama_adapter_conditions import context


def _q(tenant: str, n: int) -> EvalQuestion:
    return EvalQuestion(id=f"{tenant}-{n}", tenant=tenant, kind="fact", question="?", answers=["x"])


def test_tenants_take_turns_and_the_mixed_round_alternates() -> None:
    ctx = context(company="acme/company-llama")
    ctx.adapters[("globex", None)] = "globex/company"
    ctx.llama_adapters[("globex", None)] = "globex/company-llama"
    questions = [_q("acme", 1), _q("acme", 2), _q("acme", 3), _q("globex", 1), _q("initech", 1)]
    items = pairs(ctx, questions)
    # initech has no adapters: left out; acme and globex alternate, then acme's rest.
    assert [q.id for q, _, _ in items] == ["acme-1", "globex-1", "acme-2", "acme-3"]
    assert [adapter_for("mixed", i, "L", "A") for i in range(4)] == ["L", "A", "L", "A"]
    assert adapter_for("base", 0, "L", "A") is None and adapter_for("llama_adapter", 0, "L", "A") == "A"


@pytest.mark.weaviate
def test_each_round_sends_its_rows_and_the_section_shows_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, tuple[str, ...]]] = []
    running = ["conditions"]
    prepare, one_round = ModelServer.prepare, mixed_batch.one_round

    async def watched_prepare(
        self: ModelServer, valid: Any, adapter_ids: tuple[str, ...], *a: Any, **kw: Any
    ) -> Any:
        seen.append((running[0], tuple(adapter_ids)))
        return await prepare(self, valid, adapter_ids, *a, **kw)

    async def watched_round(name: Any, items: Any, ctx: Any) -> Any:
        running[0] = name
        try:
            return await one_round(name, items, ctx)
        finally:
            running[0] = "between"

    monkeypatch.setattr(ModelServer, "prepare", watched_prepare)
    monkeypatch.setattr(mixed_batch, "one_round", watched_round)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["eval", "--quick", "--conditions", "company,llama_company", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)

    report = json.loads((out / "report.json").read_text())
    mixed = report["mixed_batch"]
    n = mixed["prompts"]
    assert n > 0 and set(mixed["rounds"]) == set(mixed_batch.ROUNDS)
    tenant = report["answers"][0]["tenant"]
    lora, llama = f"{tenant}/company", f"{tenant}/company-llama"
    # Each round twice (A B C D D C B A), with exactly the rows it names.
    assert Counter(a for r, a in seen if r == "lora") == Counter({(lora,): 2 * n})
    assert Counter(a for r, a in seen if r == "llama_adapter") == Counter({(llama,): 2 * n})
    assert Counter(a for r, a in seen if r == "base") == Counter({(): 2 * n})
    rows = Counter(a for r, a in seen if r == "mixed")
    assert set(rows) == {(lora,), (llama,)} and abs(rows[(lora,)] - rows[(llama,)]) <= 2
    for name, r in mixed["rounds"].items():
        assert r["requests"] == 2 * n and r["tokens"] > 0 and r["seconds"] > 0, name
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"])
    assert mixed["rounds"]["mixed"]["lora_rows"] == rows[(lora,)]
    text = llama_adapter.section(report)
    assert "| LoRA and LLaMA-Adapter rows alternating | " in text and "vs LoRA rows only" in text
