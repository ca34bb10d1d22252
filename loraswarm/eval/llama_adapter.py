"""The `llama_adapter` section of BENCHMARKS.md: LoRA against LLaMA-Adapter, from one `loraswarm eval` run.

The product chose LoRA and watches LLaMA-Adapter (issue 19). Both are trained by the same trainer
on the same data with the same steps, and served by the same model server in the same batches;
this section puts each LLaMA-Adapter condition next to its LoRA twin (conditions.LLAMA_TWINS)
with what users decide by: quality with intervals, training seconds, adapter size, tokens/s of
each condition and of batches mixing both methods' rows (eval/mixed_batch.py), and cold-load time. Every verdict is computed (a difference counts
only where the 95% intervals do not overlap), so a loss is published as plainly as a win.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from loraswarm.bench.machine import describe
from loraswarm.bench.report import write_section
from loraswarm.eval.conditions import LLAMA_TWINS
from loraswarm.eval.mixed_batch import section_lines
from loraswarm.eval.publish import compare
from loraswarm.eval.scoring import Estimate, bootstrap
from loraswarm.eval.sizes import recipe_words

SECTION = "llama_adapter"
_METRICS = {"fact_accuracy": "fact accuracy", "process_recall": "process recall", "style_adherence": "style"}


def _estimate(report: dict[str, Any], condition: str, metric: str, users_only: bool) -> Estimate:
    """The condition's metric over all its answers, or over user questions only."""
    if not users_only:
        return Estimate(**report["estimates"][condition]["all"][metric])
    values = [
        float(a["scores"][metric])
        for a in report["answers"]
        if a["condition"] == condition and a["user"] and metric in a["scores"]
    ]
    return bootstrap(values, seed=int(report["settings"]["seed"]))


def _fmt(e: Estimate) -> str:
    return "–" if e.n == 0 else f"{e.mean:.2f} [{e.low:.2f}, {e.high:.2f}]"


def _tokens_per_s(report: dict[str, Any], condition: str) -> float:
    """Output tokens of the condition's answers over its wall time (its requests ran as one batch load)."""
    seconds = report["timings_s"].get(f"answer:{condition}", 0.0)
    tokens = sum(
        a["output_tokens"] for a in report["answers"] if a["condition"] == condition and not a["error"]
    )
    return tokens / seconds if seconds else float("nan")


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def costs(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per method: training seconds and size per adapter, cold load (ms) as the model server measured it."""
    cold: dict[str, float] = report.get("cold_load_ms", {})
    out = {}
    for method in ("lora", "llama_adapter"):
        mine = [a for a in report["adapters"] if a.get("method", "lora") == method and a["published"]]
        out[method] = {
            "adapters": float(len(mine)),
            "train_s": _mean([a["seconds"] for a in mine]),
            "size_kib": _mean([a.get("nbytes", 0) / 1024 for a in mine]),
            "cold_ms": _mean([cold[a["adapter_id"]] for a in mine if a["adapter_id"] in cold]),
        }
    return out


def section(report: dict[str, Any]) -> str:
    labels: dict[str, str] = report["conditions"]
    pairs = [(llama, lora) for llama, lora in LLAMA_TWINS.items() if llama in labels and lora in labels]
    t = report["timings_s"]
    lines = [
        "## LoRA vs LLaMA-Adapter (`loraswarm eval --conditions "
        + ",".join(c for pair in pairs for c in (pair[1], pair[0]))
        + (f" --size {report['sizes']['size']}" if report["sizes"].get("size", "full") != "full" else "")
        + "`)",
        "",
        f"Machine: {describe()}. One run of `loraswarm eval` (seed {report['settings']['seed']}, "
        f"{report['sizes']['questions']} questions; adapters trained for "
        f"{recipe_words(report['settings']['hyperparameters'])}, the same data, steps and batches for both "
        f"methods; whole run {t['total'] / 60:.1f} min). "
        "A user's LLaMA-Adapter is trained and served on top of the company LoRA (a stack holds at most one "
        "LLaMA-Adapter), so the user-adapter rows compare user questions only, where the two differ; the "
        "company row compares every question. Mean [95% bootstrap CI].",
        "",
        "| LoRA condition | LLaMA-Adapter condition | questions | metric | LoRA | LLaMA-Adapter | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts: list[tuple[str, str, str]] = []
    for llama, lora in pairs:
        users_only = llama != "llama_company"
        for metric, name in _METRICS.items():
            a, b = _estimate(report, lora, metric, users_only), _estimate(report, llama, metric, users_only)
            verdict = compare(b, a)
            word = {"better": "LLaMA-Adapter better", "worse": "LoRA better", "tied": "tied", "n/a": "n/a"}[
                verdict
            ]
            verdicts.append((labels[llama], name, verdict))
            lines.append(
                f"| {labels[lora]} | {labels[llama]} | {'users' if users_only else 'all'} ({a.n}) | {name} | "
                f"{_fmt(a)} | {_fmt(b)} | {word} |"
            )
    c = costs(report)
    rates = {m: [_tokens_per_s(report, x) for x in ([lora for _, lora in pairs] if m == "lora" else [llama for llama, _ in pairs])] for m in c}  # fmt: skip
    lines += [
        "",
        "Costs (per adapter; tokens/s: each condition's output tokens over its wall time, "
        f"{report['settings']['concurrency']} requests at a time; the conditions run one after another, so "
        "these batches hold one method's rows — the mixed batches follow):",
        "",
        "| method | adapters | training (s) | size (KiB) | cold load (ms) | tokens/s, "
        + ", ".join(labels[lora] for _, lora in pairs)
        + " / their twins |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for method, label in (("lora", "LoRA"), ("llama_adapter", "LLaMA-Adapter")):
        m = c[method]
        lines.append(
            f"| {label} | {m['adapters']:.0f} | {m['train_s']:.0f} | {m['size_kib']:.0f} | {m['cold_ms']:.1f} | "
            + " / ".join(f"{r:.1f}" for r in rates[method])
            + " |"
        )
    lines += section_lines(report.get("mixed_batch", {}))
    lines += ["", "What it says:", ""]
    better = [f"{cond} ({metric})" for cond, metric, v in verdicts if v == "better"]
    worse = [f"{cond} ({metric})" for cond, metric, v in verdicts if v == "worse"]
    tied = sum(v == "tied" for _, _, v in verdicts)
    lines.append(
        f"- Quality: LLaMA-Adapter is better in {len(better)}, worse in {len(worse)} and tied (overlapping "
        f"intervals) in {tied} of {len(verdicts)} comparisons"
        + (f"; better: {', '.join(better)}" if better else "")
        + (f"; worse: {', '.join(worse)}" if worse else "")
        + "."
    )
    lo, ll = c["lora"], c["llama_adapter"]
    if lo["size_kib"] and ll["size_kib"]:
        lines.append(
            f"- Size: a LLaMA-Adapter is {ll['size_kib']:.0f} KiB against LoRA's {lo['size_kib']:.0f} KiB "
            f"({ll['size_kib'] / lo['size_kib']:.2f}x); training took {ll['train_s']:.0f} s against {lo['train_s']:.0f} s "
            f"({ll['train_s'] / lo['train_s']:.2f}x)."
        )
    for method, label in (("lora", "LoRA"), ("llama_adapter", "LLaMA-Adapter")):
        moved = [
            a["metrics"]["heldout_loss"] - a["metrics"]["start_heldout_loss"]
            for a in report["adapters"]
            if a.get("method", "lora") == method and "heldout_loss" in a["metrics"]
        ]
        if moved:
            change = _mean(moved)
            lines.append(
                f"- Training changed {label}'s held-out loss by {change:+.3f} on average "
                f"({'lower' if change < 0 else 'higher'} than the model it started from)."
            )
    lines.append(gate_line(report))
    return "\n".join(lines)


def gate_line(report: dict[str, Any]) -> str:
    """Which adapters the trainer's gate published or refused, and the quality bound it used."""
    adapters = report["adapters"]
    refused = [f"{a['adapter_id']} ({a['detail']})" for a in adapters if not a["published"]]
    bound = report["settings"].get("max_quality_regression")
    return (
        f"- Gate: {len(adapters) - len(refused)} of {len(adapters)} adapters published"
        + (f"; refused: {', '.join(refused)}" if refused else "")
        + (
            f"; held-out loss rise allowed: {bound:.0%} (loraswarm/eval/sizes.py says why)"
            if bound is not None
            else ""
        )
        + "."
    )


def publish(report: dict[str, Any], benchmarks: Path) -> bool:
    """Write the section when the run had LLaMA-Adapter conditions; whether it did."""
    if not any(llama in report["conditions"] for llama in LLAMA_TWINS):
        return False
    write_section(benchmarks, SECTION, section(report))
    return True
