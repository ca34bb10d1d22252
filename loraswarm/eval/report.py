"""Scores per answer, estimates per condition and tenant, and the three files: report.md,
report.json and chart.png."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loraswarm.eval.conditions import SPECS, Answer
from loraswarm.eval.questions import EvalQuestion
from loraswarm.eval.runner import EvalRun
from loraswarm.eval.scoring import Estimate, bootstrap, contains, fact_scores, process_scores, style_score
from loraswarm.eval.sizes import recipe_words
from loraswarm.shared import answer_checks as checks

METRICS = ("fact_accuracy", "fact_exact", "process_recall", "process_order", "style_adherence")
_CHARTED = ("fact_accuracy", "process_recall", "process_order", "style_adherence")
ALL = "all"


@dataclass
class Scored:
    question: EvalQuestion
    answer: Answer
    scores: dict[str, float]  # the metrics that apply to this question's kind


def score(question: EvalQuestion, answer: Answer) -> dict[str, float]:
    """A failed answer scores as an empty one: a condition that cannot answer gets no credit."""
    return score_text(question, answer.text)


def score_text(question: EvalQuestion, text: str) -> dict[str, float]:
    """The metrics of `text` as an answer to `question` (those of the question's kind)."""
    if question.kind == "fact":
        hit, exact = fact_scores(text, question.answers, question.all_of)
        return {"fact_accuracy": hit, "fact_exact": exact}
    if question.kind == "process":
        recall, order = process_scores(text, question.steps)
        return {"process_recall": recall} | ({"process_order": order} if order is not None else {})
    return {"style_adherence": style_score(text, question.style_rules)}


def score_run(run: EvalRun) -> list[Scored]:
    by_id = {q.id: q for q in run.questions}
    return [Scored(by_id[a.question_id], a, score(by_id[a.question_id], a)) for a in run.answers]


def estimates(scored: list[Scored], seed: int) -> dict[str, dict[str, dict[str, Estimate]]]:
    """condition → tenant (or `all`, or `two_source`) → metric → estimate with a bootstrap CI."""
    out: dict[str, dict[str, dict[str, Estimate]]] = {}
    conditions = list(dict.fromkeys(s.answer.condition for s in scored))
    tenants = sorted({s.question.tenant for s in scored})
    for ci, condition in enumerate(conditions):
        mine = [s for s in scored if s.answer.condition == condition]
        groups = {ALL: mine, "two_source": [s for s in mine if s.question.two_source]}
        groups |= {t: [s for s in mine if s.question.tenant == t] for t in tenants}
        out[condition] = {}
        for gi, (group, items) in enumerate(groups.items()):
            out[condition][group] = {
                # One seed per cell, derived from the run's seed: reproducible, yet not the same
                # resamples for every cell.
                m: bootstrap(
                    [s.scores[m] for s in items if m in s.scores], seed=seed * 1000 + ci * 100 + gi * 10 + mi
                )
                for mi, m in enumerate(METRICS)
            }
    return out


def _cost(answers: list[Answer]) -> dict[str, float]:
    ok = [a for a in answers if a.error is None]
    lat = sorted(a.latency_ms for a in ok)
    return {
        "answers": float(len(answers)),
        "failed": float(len(answers) - len(ok)),
        "latency_ms_p50": statistics.median(lat) if lat else math.nan,
        "latency_ms_mean": statistics.fmean(lat) if lat else math.nan,
        "input_tokens_mean": statistics.fmean(a.input_tokens for a in ok) if ok else math.nan,
        "output_tokens_mean": statistics.fmean(a.output_tokens for a in ok) if ok else math.nan,
        "retrieved_mean": statistics.fmean(a.retrieved for a in ok) if ok else math.nan,
    }


def answer_quality(scored: list[Scored]) -> dict[str, Any]:
    """The answer scorer's figures (shared/answer_checks.py) for one condition's answers.

    `in_passages`: the share of fact questions whose accepted answer was in the passages the
    condition was given (None without retrieval): next to fact accuracy it shows how much is lost
    between retrieval and the answer.
    """
    ok = [s for s in scored if s.answer.error is None]
    rates = checks.rates(
        [checks.check(s.answer.text, s.question.question, s.answer.passages, s.answer.cited) for s in ok]
    )
    facts = [s for s in scored if s.question.kind == "fact"]
    retrieved = [s for s in facts if s.answer.passages]
    held = [
        s
        for s in retrieved
        if any(contains(" ".join(s.answer.passages), a) for a in (s.question.answers or s.question.all_of[0]))
    ]
    multi = [s for s in ok if len(checks.question_parts(s.question.question)) > 1]
    return asdict(rates) | {
        "in_passages": len(held) / len(facts) if retrieved and facts else None,
        "fact_accuracy_when_in_passages": (
            statistics.fmean(s.scores["fact_accuracy"] for s in held) if held else None
        ),
        "multi_part_questions": [
            {
                "question": s.question.id,
                "answer": s.answer.text,
                "all_parts": checks.check(s.answer.text, s.question.question, s.answer.passages).all_parts,
            }
            for s in multi
        ],
    }


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def quality_markdown(report: dict[str, Any]) -> list[str]:
    lines = [
        "Answer checks (shared/answer_checks.py; citation support = share of the answer's own content words "
        f"and numbers the passage states, threshold {checks.SUPPORT_THRESHOLD}):",
        "",
        "| condition | echo rate | repeated-sentence rate | multi-part answered in each part | citation precision | "
        "citation recall | answers citing nothing | fact answer in the passages given | fact accuracy when it was |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c, label in report["conditions"].items():
        q = report["answer_quality"][c]
        lines.append(
            f"| {label} | {_rate(q['echo_rate'])} | {_rate(q['repeat_rate'])} | "
            f"{q['multi_part_covered']} / {q['multi_part']} | {_rate(q['citation_precision'])} | "
            f"{_rate(q['citation_recall'])} | {q['uncited']} / {q['answers']} | {_rate(q['in_passages'])} | "
            f"{_rate(q['fact_accuracy_when_in_passages'])} |"
        )
    return lines


def _fmt(e: Estimate) -> str:
    if e.n == 0 or math.isnan(e.mean):
        return "–"
    return f"{e.mean:.2f} [{e.low:.2f}, {e.high:.2f}]"


def build(run: EvalRun) -> dict[str, Any]:
    scored = score_run(run)
    est = estimates(scored, run.config.seed)
    conditions = list(est)
    costs = {c: _cost([s.answer for s in scored if s.answer.condition == c]) for c in conditions}
    kinds = {k: sum(q.kind == k for q in run.questions) for k in ("fact", "process", "style")}
    return {
        "sizes": {
            "tenants": len({q.tenant for q in run.questions}),
            "users": len({(q.tenant, q.user) for q in run.questions if q.user}),
            "questions": len(run.questions),
            "questions_by_kind": kinds,
            "two_source_questions": sum(q.two_source for q in run.questions),
            "chunks_indexed": run.chunks,
            "adapters_trained": len(run.adapters),
            "training_steps": run.config.steps,
            **run.config.sizes,
        },
        "settings": {
            "seed": run.config.seed,
            "concurrency": run.config.concurrency,
            "max_new_tokens": run.config.max_new_tokens,
            "min_train_tokens": run.config.min_train_tokens,
            "max_quality_regression": run.config.max_quality_regression,
            "hyperparameters": {"steps": run.config.steps, "canaries": 0, **run.config.hyperparameters},
            "bootstrap": "percentile, 1000 resamples, 95%",
            "serving": run.serving,
        },
        "conditions": {c: SPECS[c].label for c in conditions},  # type: ignore[index]
        "estimates": {
            c: {g: {m: asdict(e) for m, e in metrics.items()} for g, metrics in groups.items()}
            for c, groups in est.items()
        },
        "costs": costs,
        "answer_quality": {
            c: answer_quality([s for s in scored if s.answer.condition == c]) for c in conditions
        },
        "adapters": [asdict(a) for a in run.adapters],
        "timings_s": run.timings_s,
        "cold_load_ms": run.cold_load_ms,  # issue 19's cost table
        "mixed_batch": run.mixed_batch,  # issue 19's tokens/s in mixed batches
        "answers": [
            {
                "question": s.question.id,
                "tenant": s.question.tenant,
                "user": s.question.user,
                "kind": s.question.kind,
                **asdict(s.answer),
                "scores": s.scores,
            }
            for s in scored
        ],
    }


def markdown(report: dict[str, Any], chart: str | None = "chart.png") -> str:
    sizes, est, costs = report["sizes"], report["estimates"], report["costs"]
    lines = [
        f"Sizes: {sizes['tenants']} tenant(s), {sizes['users']} user(s), {sizes['questions']} questions "
        f"({', '.join(f'{n} {k}' for k, n in sizes['questions_by_kind'].items())}; "
        f"{sizes['two_source_questions']} need two sources), {sizes['chunks_indexed']} chunks indexed, "
        f"{sizes['adapters_trained']} adapter(s), {recipe_words(report['settings']['hyperparameters'])}. "
        f"Every condition answers the same questions with the same base model, greedy decoding, "
        f"{report['settings']['concurrency']} requests at a time. Mean [95% bootstrap CI].",
        "",
        "| condition | fact accuracy | process recall | process order | style adherence | latency p50 (s) | tokens in / out |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, label in report["conditions"].items():
        a = {m: Estimate(**v) for m, v in est[c]["all"].items()}
        cost = costs[c]
        failed = f" ({int(cost['failed'])} failed)" if cost["failed"] else ""
        lines.append(
            f"| {label}{failed} | {_fmt(a['fact_accuracy'])} | {_fmt(a['process_recall'])} | "
            f"{_fmt(a['process_order'])} | {_fmt(a['style_adherence'])} | {cost['latency_ms_p50'] / 1000:.1f} | "
            f"{cost['input_tokens_mean']:.0f} / {cost['output_tokens_mean']:.0f} |"
        )
    if "answer_quality" in report:
        lines += ["", *quality_markdown(report)]
    lines += ["", "Two-source questions only (the answer needs the user's notes and the company's data):", ""]
    lines += ["| condition | fact accuracy | style adherence |", "|---|---|---|"]
    for c, label in report["conditions"].items():
        t = {m: Estimate(**v) for m, v in est[c]["two_source"].items()}
        lines.append(f"| {label} | {_fmt(t['fact_accuracy'])} | {_fmt(t['style_adherence'])} |")
    tenants = sorted(g for g in next(iter(est.values())) if g not in (ALL, "two_source"))
    lines += [
        "",
        "Per tenant:",
        "",
        "| tenant | condition | fact accuracy | process recall | process order | style adherence |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for t in tenants:
        for c, label in report["conditions"].items():
            e = {m: Estimate(**v) for m, v in est[c][t].items()}
            lines.append(
                f"| {t} | {label} | {_fmt(e['fact_accuracy'])} | {_fmt(e['process_recall'])} | "
                f"{_fmt(e['process_order'])} | {_fmt(e['style_adherence'])} |"
            )
    bound = report["settings"].get("max_quality_regression")
    gate = f"; the gate allowed a held-out loss rise of {bound:.0%}" if bound is not None else ""
    lines += ["", f"Adapters (trained by the trainer, LoRA; held-out loss before → after{gate}):", ""]
    lines += [
        "| adapter | outcome | training sequences | steps | held-out loss | seconds |",
        "|---|---|---:|---:|---|---|",
    ]
    for a in report["adapters"]:
        m = a["metrics"]
        loss = f"{m['start_heldout_loss']:.3f} → {m['heldout_loss']:.3f}" if "heldout_loss" in m else "–"
        outcome = f"published {a['detail']}" if a["published"] else f"rejected ({a['detail']})"
        seqs, steps = (f"{m[k]:.0f}" if k in m else "–" for k in ("train_sequences", "steps"))
        lines.append(f"| {a['adapter_id']} | {outcome} | {seqs} | {steps} | {loss} | {a['seconds']:.0f} |")
    if chart:
        lines += ["", f"![personalization benchmark]({chart})"]
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    est = report["estimates"]
    conditions = list(report["conditions"])
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(conditions)
    for i, c in enumerate(conditions):
        means: list[float] = []
        errs: list[list[float]] = [[], []]
        for m in _CHARTED:
            e = Estimate(**est[c]["all"][m])
            ok = e.n > 0 and not math.isnan(e.mean)
            means.append(e.mean if ok else 0.0)
            errs[0].append(e.mean - e.low if ok else 0.0)
            errs[1].append(e.high - e.mean if ok else 0.0)
        xs = [j + (i - (len(conditions) - 1) / 2) * width for j in range(len(_CHARTED))]
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=report["conditions"][c])
    ax.set_xticks(range(len(_CHARTED)), [m.replace("_", " ") for m in _CHARTED])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean score (95% bootstrap CI)")
    ax.set_title(
        f"Personalization benchmark: {report['sizes']['questions']} questions, {report['sizes']['tenants']} tenant(s)"
    )
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finite(value: Any) -> Any:
    """NaN (a metric with no data, e.g. order with < 2 steps found) as null: strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write(run: EvalRun, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    report = build(run)
    (out / "report.json").write_text(json.dumps(_finite(report), indent=2, default=str, allow_nan=False))
    chart(report, out / "chart.png")
    (out / "report.md").write_text("# Personalization benchmark\n\n" + markdown(report))
    return report
