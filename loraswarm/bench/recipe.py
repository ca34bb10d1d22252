"""`loraswarm bench recipe`: which training recipe makes an adapter carry a tenant's facts.

The sweep behind the trainer's defaults (issue 13). One generated company (`loraswarm.eval.corpus`,
seed 0: random names, numbers and codes the base model cannot know) is chunked by ingestion's own
parser; each recipe trains the company's adapter on the trainer's own data path (the builder's
examples mixed with raw text by `dataset.scope_units`, whole documents held out by
`split_heldout`, steps by `steps_for`, `train_adapter`) and then answers the company's eval
questions *without* retrieval, greedy, with the eval's own prompt and scorers: what it gets right
is in the weights. The base model answers the same questions in the same run (the floor).

Not the whole job: no canaries, leakage gate or publish (they do not change what the adapter
learns from the tenant's data beyond the planted copies), and answers come from transformers'
`generate` on the training copy rather than the model server (the same weights; the eval measures
the served path). Every figure in the table is computed in the run.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraswarm.bench.machine import describe
from loraswarm.bench.report import write_section
from loraswarm.shared.settings import Settings


@dataclass(frozen=True)
class Recipe:
    name: str
    hyperparameters: dict[str, Any]
    builder: dict[str, Any] = field(default_factory=dict)  # BuilderSettings fields changed
    kinds: tuple[str, ...] = ()  # built kinds kept (empty: all)


# The recipe before the sweep (the eval's 60 steps of 4 on LoRA's defaults then: rank 8 on q/v,
# 5e-4) first, then one change at a time around the grid's centre (`CENTRE`). The eval's sizes
# train with the best row (loraswarm/eval/sizes.py says which, and BENCHMARKS.md shows the table).
BEFORE = Recipe(
    "before: q/v r8, lr 5e-4, 60 steps of 4",
    {
        "steps": 60,
        "batch_size": 4,
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "learning_rate": 5e-4,
    },
)
_BASE = {"batch_size": 8, "learning_rate": 2e-3, "r": 16, "lora_alpha": 32, "steps": 1000}
CENTRE = Recipe("all-linear r16, lr 2e-3, 4 epochs", {**_BASE, "target_modules": ["all-linear"], "epochs": 4})
RECIPES: tuple[Recipe, ...] = (
    BEFORE,
    Recipe("q/v r16, lr 2e-3, 4 epochs", {**_BASE, "target_modules": ["q_proj", "v_proj"], "epochs": 4}),
    Recipe("all-linear r16, lr 2e-3, 2 epochs", {**CENTRE.hyperparameters, "epochs": 2}),
    CENTRE,
    Recipe("all-linear r16, lr 3e-3, 4 epochs", {**CENTRE.hyperparameters, "learning_rate": 3e-3}),
    Recipe("all-linear r16, lr 2e-3, 8 epochs", {**CENTRE.hyperparameters, "epochs": 8}),
)  # fmt: skip
QUICK: tuple[Recipe, ...] = (
    Recipe("quick: q/v r8, 2 steps", {"steps": 2, "batch_size": 2, "seq_len": 64}),
    Recipe("quick: all-linear r8, 2 steps", {"steps": 2, "batch_size": 2, "seq_len": 64, "target_modules": ["all-linear"]}),
)  # fmt: skip
_MAX_NEW = {"fact": 40, "process": 80, "style": 80}


@dataclass
class Row:
    recipe: str
    examples: dict[str, int]  # built examples kept, by kind
    sequences: int  # training sequences (built examples and raw blocks)
    steps: int
    seconds: float  # training
    loss: tuple[float, float]  # first and last step's training loss
    scores: dict[str, list[float]]  # kind -> per-question score
    sample: str = ""  # one fact answer, for the report


@dataclass
class Results:
    machine: str
    tenant: str
    chunks: int
    questions: dict[str, int]
    base: Row | None = None
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0


def _answers(model: Any, tokenizer: Any, questions: Sequence[Any]) -> dict[str, str]:
    """Question id → the model's greedy answer, one batch per kind (its own length budget)."""
    import torch

    from loraswarm.eval.conditions import build_prompt
    from loraswarm.shared.models import native_cpu_bf16

    out: dict[str, str] = {}
    tokenizer.padding_side = "left"
    for kind in ("fact", "process", "style"):
        batch = [q for q in questions if q.kind == kind]
        if not batch:
            continue
        enc = tokenizer([build_prompt(q, []) for q in batch], return_tensors="pt", padding=True)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=native_cpu_bf16()):
            made = model.generate(
                **enc, max_new_tokens=_MAX_NEW[kind], do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        # made: [questions, prompt + new tokens]; the prompt is left-padded to one length.
        for q, m in zip(batch, made, strict=True):
            out[q.id] = tokenizer.decode(m[enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


_METRIC = {"fact": "fact_accuracy", "process": "process_recall", "style": "style_adherence"}


def _score(questions: Sequence[Any], answers: dict[str, str]) -> dict[str, list[float]]:
    """Kind → each question's score, by the eval's own scorer."""
    from loraswarm.eval.report import score_text

    scores: dict[str, list[float]] = {kind: [] for kind in _METRIC}
    for q in questions:
        scores[q.kind].append(score_text(q, answers[q.id])[_METRIC[q.kind]])
    return scores


def _train_one(
    settings: Settings, recipe: Recipe, chunks: list[Any], base: Any, questions: Sequence[Any]
) -> Row:
    from loraswarm.services.trainer import builder, methods
    from loraswarm.services.trainer.dataset import (
        scope_units,
        split_heldout,
        steps_for,
        style_units,
        training_batches,
    )
    from loraswarm.services.trainer.loop import train_adapter

    model0, tokenizer = base.get()
    s = settings.model_copy(deep=True)
    s.trainer.builder = s.trainer.builder.model_copy(update=recipe.builder)
    b = s.trainer.builder
    built = builder.from_settings(s).build(chunks)
    examples = [e for e in built.examples if not recipe.kinds or e.kind in recipe.kinds]
    hp = methods.hyperparameters("lora", s.trainer.defaults, {"precision": "auto", **recipe.hyperparameters})
    units, _ = scope_units(
        chunks,
        examples,
        tokenizer,
        seq_len=hp.seq_len,
        max_example_tokens=b.max_example_tokens,
        raw_text_share=b.raw_text_share,
        min_tokens=2 * s.trainer.min_train_tokens,
    )
    # The trainer's own split (pipeline.py), style documents kept in training.
    train, _ = split_heldout(
        units, s.trainer.heldout_fraction, s.trainer.max_heldout_sequences, keep=style_units(chunks)
    )
    hp = hp.model_copy(update={"steps": steps_for(hp, len(train))})
    model = methods.attach(copy.deepcopy(model0), "lora", hp)
    started = time.perf_counter()
    result = train_adapter(
        model, training_batches(train, hp.batch_size, tokenizer.pad_token_id, hp.seed), hp, device="cpu"
    )
    seconds = time.perf_counter() - started
    model.eval()
    answers = _answers(model, tokenizer, questions)
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    return Row(
        recipe.name, counts, len(train), hp.steps, seconds, (result.losses[0], result.losses[-1]),
        _score(questions, answers), next((answers[q.id] for q in questions if q.kind == "fact"), ""),
    )  # fmt: skip


def run(
    settings: Settings,
    recipes: Sequence[Recipe] = RECIPES,
    *,
    seed: int = 0,
    out: Path | None = None,
    log: Callable[[str], object] = print,
) -> Results:
    from loraswarm.bench.training import demo_chunks
    from loraswarm.eval.corpus import generate
    from loraswarm.services.trainer.pipeline import BaseModels

    started = time.perf_counter()
    generated = generate(seed=seed, tenants=1, users_per_tenant=2, per_kind=18)
    with tempfile.TemporaryDirectory() as tmp:
        generated.write(Path(tmp) / "corpus", Path(tmp) / "questions.jsonl")
        scopes = demo_chunks(settings, Path(tmp) / "corpus")
    (tenant, _), chunks = next((k, v) for k, v in scopes.items() if k[1] is None)
    questions = [q for q in generated.questions if q.tenant == tenant and q.user is None]
    kinds = {k: sum(1 for q in questions if q.kind == k) for k in ("fact", "process", "style")}
    results = Results(describe(), tenant, len(chunks), kinds)
    base = BaseModels(settings)
    model, tokenizer = base.get()
    results.base = Row(
        "base model (no adapter)",
        {},
        0,
        0,
        0.0,
        (0.0, 0.0),
        _score(questions, _answers(model, tokenizer, questions)),
    )
    for recipe in recipes:
        log(f"recipe: {recipe.name} ...")
        row = _train_one(settings, recipe, chunks, base, questions)
        log(f"  {row.steps} steps, {row.seconds:.0f} s, facts {_mean(row.scores['fact']):.2f}")
        results.rows.append(row)
    results.seconds = time.perf_counter() - started
    if out is not None:
        write_section(out, "recipe", markdown(results))
    return results


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _ci(values: Sequence[float], seed: int = 0) -> str:
    from loraswarm.eval.scoring import bootstrap

    est = bootstrap(values, seed=seed)
    return f"{est.mean:.2f} [{est.low:.2f}, {est.high:.2f}]"


def markdown(r: Results) -> str:
    rows = [r.base, *r.rows] if r.base else r.rows
    lines = [
        "## Training recipe (`loraswarm bench recipe`)",
        "",
        f"Machine: {r.machine}. One generated company ({r.tenant}, seed 0: {r.chunks} chunks; "
        f"{r.questions['fact']} fact, {r.questions['process']} process and {r.questions['style']} style "
        "questions), each recipe training its company LoRA on the trainer's own data path (the builder's "
        "examples with raw text, whole documents held out), then answering the questions **without "
        "retrieval** (greedy, the eval's prompt and scorers): what it gets right is in the weights. "
        f"Mean [95% bootstrap CI]; the base model answers the same questions in the same run. Whole run "
        f"{r.seconds / 60:.1f} min.",
        "",
        "| recipe | built examples | sequences | steps | training (s) | loss first → last | fact accuracy | "
        "process recall | style adherence |",
        "|---|---|---:|---:|---:|---|---|---|---|",
    ]
    for row in rows:
        built = ", ".join(f"{k} {v}" for k, v in sorted(row.examples.items())) or "–"
        loss = f"{row.loss[0]:.2f} → {row.loss[1]:.2f}" if row.steps else "–"
        lines.append(
            f"| {row.recipe} | {built} | {row.sequences} | {row.steps} | {row.seconds:.0f} | {loss} | "
            f"{_ci(row.scores['fact'])} | {_ci(row.scores['process'])} | {_ci(row.scores['style'])} |"
        )
    if r.rows:
        best = max(r.rows, key=lambda row: (_mean(row.scores["fact"]), _mean(row.scores["process"])))
        lines += [
            "",
            f"Most facts in the weights: **{best.recipe}** (fact accuracy {_mean(best.scores['fact']):.2f} "
            f"on {len(best.scores['fact'])} questions, {best.seconds:.0f} s of training; "
            f"first answer: {best.sample.strip()[:100]!r}).",
        ]
    return "\n".join(lines)
