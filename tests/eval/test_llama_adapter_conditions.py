"""Issue 19's eval conditions: which adapters each asks for, and the LoRA vs LLaMA-Adapter section (no model)."""

from __future__ import annotations

from pathlib import Path

from loraswarm.eval import llama_adapter
from loraswarm.eval.conditions import SPECS, Answer, EvalContext, adapter_stack
from loraswarm.eval.questions import EvalQuestion
from loraswarm.eval.report import build
from loraswarm.eval.runner import EvalConfig, EvalRun, TrainedAdapter, needed_adapters, needed_llama_adapters
from loraswarm.shared.settings import Settings

COMPANY_Q = EvalQuestion(id="c1", tenant="acme", kind="fact", question="Shipping?", answers=["13 euros"])
USER_Q = EvalQuestion(id="u1", tenant="acme", user="ana", kind="fact", question="My code?", answers=["K7"])


def context(**llama: str) -> EvalContext:
    return EvalContext(
        Settings(broker="memory"),
        "http://model",
        {("acme", None): "acme/company", ("acme", "ana"): "acme/user-ana"},
        {"fact": 8, "process": 8, "style": 8},
        1,
        llama_adapters={("acme", None if k == "company" else k): v for k, v in llama.items()},
    )


def test_each_llama_condition_asks_for_the_question_scopes_llama_adapter() -> None:
    ctx = context(company="acme/company-llama", ana="acme/llama-user-ana")
    stacks = {
        name: (adapter_stack(SPECS[name], COMPANY_Q, ctx), adapter_stack(SPECS[name], USER_Q, ctx))
        for name in ("company", "company_user", "llama_company", "llama_user", "llama_rag", "llama_swarm")
    }
    assert stacks["llama_company"] == (["acme/company-llama"], ["acme/company-llama"])
    # A user's LLaMA-Adapter sits on the company LoRA: the same stack as LoRA's but the user's adapter.
    for name in ("llama_user", "llama_rag", "llama_swarm"):
        assert stacks[name] == (["acme/company"], ["acme/company", "acme/llama-user-ana"]), name
    assert stacks["company_user"] == (["acme/company"], ["acme/company", "acme/user-ana"])
    # Not published: the condition says so instead of asking for another adapter.
    assert adapter_stack(SPECS["llama_user"], USER_Q, context()) is None
    assert adapter_stack(SPECS["llama_company"], COMPANY_Q, context()) is None


def test_the_runner_trains_llama_adapters_only_for_llama_conditions(tmp_path: Path) -> None:
    config = EvalConfig(corpus=tmp_path, questions=tmp_path, out=tmp_path, conditions=["company_user"])
    assert needed_llama_adapters(config, [COMPANY_Q, USER_Q]) == []
    config.conditions = ["llama_user"]
    assert needed_llama_adapters(config, [COMPANY_Q, USER_Q]) == [("acme", "ana")]
    assert needed_adapters(config, [COMPANY_Q, USER_Q]) == [
        ("acme", None),
        ("acme", "ana"),
    ]  # the company LoRA
    config.conditions = ["llama_company", "llama_swarm"]
    assert needed_llama_adapters(config, [COMPANY_Q, USER_Q]) == [("acme", None), ("acme", "ana")]


def _run(tmp_path: Path, llama_right: bool) -> EvalRun:
    questions = [
        EvalQuestion(id=f"u{i}", tenant="acme", user="ana", kind="fact", question="Code?", answers=["K7"])
        for i in range(12)
    ] + [COMPANY_Q]
    answers = []
    for q in questions:
        answers.append(Answer(q.id, "company_user", text="K7 13 euros", output_tokens=10))
        answers.append(
            Answer(q.id, "llama_user", text="K7 13 euros" if llama_right else "no idea", output_tokens=10)
        )
    adapters = [
        TrainedAdapter("acme", "ana", "acme/user-ana", True, 40.0, "@1", {}, "lora", 2048 * 1024),
        TrainedAdapter(
            "acme", "ana", "acme/llama-user-ana", True, 30.0, "@1", {}, "llama_adapter", 256 * 1024
        ),
    ]
    config = EvalConfig(
        corpus=tmp_path, questions=tmp_path, out=tmp_path, conditions=["company_user", "llama_user"]
    )
    timings = {"total": 60.0, "answer:company_user": 10.0, "answer:llama_user": 20.0}
    cold = {"acme/user-ana": 20.0, "acme/llama-user-ana": 5.0}
    return EvalRun(config, questions, answers, adapters, 1, timings, cold)


def test_the_section_computes_its_verdicts_and_costs(tmp_path: Path) -> None:
    losing = llama_adapter.section(build(_run(tmp_path, llama_right=False)))
    assert "| users (12) | fact accuracy | 1.00 [1.00, 1.00] | 0.00 [0.00, 0.00] | LoRA better |" in losing
    assert "worse in 1" in losing
    # 13 answers x 10 tokens in 10 s and in 20 s; 2 MiB and 256 KiB; 40 s and 30 s; 20 and 5 ms.
    assert "| LoRA | 1 | 40 | 2048 | 20.0 | 13.0 |" in losing
    assert "| LLaMA-Adapter | 1 | 30 | 256 | 5.0 | 6.5 |" in losing
    assert "(0.12x)" in losing and "(0.75x)" in losing
    tied = llama_adapter.section(build(_run(tmp_path, llama_right=True)))
    assert "LoRA better" not in tied and "better in 0, worse in 0" in tied


def test_the_section_is_published_between_its_own_markers_only_for_llama_runs(tmp_path: Path) -> None:
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n\n<!-- bench:serving -->\nkept\n<!-- /bench:serving -->\n")
    report = build(_run(tmp_path, llama_right=False))
    assert llama_adapter.publish(report, benchmarks)
    text = benchmarks.read_text()
    assert (
        "kept" in text and "<!-- bench:llama_adapter -->" in text and "<!-- /bench:llama_adapter -->" in text
    )
    report["conditions"] = {"company_user": "company + user adapter"}
    assert not llama_adapter.publish(report, tmp_path / "other.md")
