"""The `personalization` section of BENCHMARKS.md: the table, the chart, and what they show.

The findings are computed from the numbers (a difference counts only when the two 95% intervals
do not overlap), so the section says where RAG alone wins as plainly as where an adapter does.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from loraswarm.bench.machine import describe
from loraswarm.bench.report import write_section
from loraswarm.eval.report import markdown
from loraswarm.eval.scoring import Estimate

CHART = Path("bench/personalization/chart.png")
_NAMES = {
    "fact_accuracy": "fact accuracy",
    "process_recall": "process-step recall",
    "process_order": "process-step order",
    "style_adherence": "style adherence",
}


def compare(a: Estimate, b: Estimate) -> str:
    """`better`, `worse` or `tied` (overlapping 95% intervals) for a against b."""
    if a.n == 0 or b.n == 0:
        return "n/a"
    if a.low > b.high:
        return "better"
    if a.high < b.low:
        return "worse"
    return "tied"


def findings(report: dict[str, Any]) -> list[str]:
    est = report["estimates"]
    labels: dict[str, str] = report["conditions"]
    lines = []

    def e(condition: str, metric: str) -> Estimate:
        return Estimate(**est[condition]["all"][metric])

    for metric, name in _NAMES.items():
        scored = [c for c in labels if e(c, metric).n > 0]
        if not scored:
            continue
        best = max(scored, key=lambda c: e(c, metric).mean)
        ties = [c for c in scored if c != best and compare(e(best, metric), e(c, metric)) == "tied"]
        line = f"- {name}: best is {labels[best]} ({e(best, metric).mean:.2f})"
        line += (
            f", within the interval of {', '.join(labels[c] for c in ties)}"
            if ties
            else ", ahead of every other condition"
        ) + "."
        if "rag" in labels:
            for adapter in ("company", "company_user"):
                if adapter in labels:
                    verdict = compare(e("rag", metric), e(adapter, metric))
                    if verdict == "better":
                        line += f" RAG alone beats the {labels[adapter]} ({e('rag', metric).mean:.2f} vs {e(adapter, metric).mean:.2f})."
                    elif verdict == "worse":
                        line += f" The {labels[adapter]} beats RAG alone ({e(adapter, metric).mean:.2f} vs {e('rag', metric).mean:.2f})."
        if "rag" in labels and "adapter_rag" in labels:
            verdict = compare(e("adapter_rag", metric), e("rag", metric))
            if verdict != "n/a":
                word = {
                    "better": "adds to",
                    "worse": "takes away from",
                    "tied": "makes no measurable difference to",
                }[verdict]
                line += f" Adding the adapters {word} RAG ({e('adapter_rag', metric).mean:.2f} vs {e('rag', metric).mean:.2f})."
        # The training-set builder against the raw-text recipe, trained in the same run.
        for built, raw in (("company_user", "raw_company_user"), ("adapter_rag", "raw_adapter_rag")):
            if built in labels and raw in labels:
                verdict = compare(e(built, metric), e(raw, metric))
                if verdict != "n/a":
                    word = {"better": "beats", "worse": "loses to", "tied": "is within the interval of"}[
                        verdict
                    ]
                    line += (
                        f" {labels[built][:1].upper()}{labels[built][1:]} (builder) {word} {labels[raw]} "
                        f"({e(built, metric).mean:.2f} vs {e(raw, metric).mean:.2f})."
                    )
        lines.append(line)
    return lines


def numerics(report: dict[str, Any]) -> str:
    """How the run computed: the model server's device and dtype, the adapters' training precision."""
    served = report["settings"].get("serving") or "served in a format the report did not record"
    trained = {"bf16" if a["metrics"].get("train_bf16") else "fp32" for a in report["adapters"]}
    how = " and ".join(sorted(trained)) if trained else "no adapter"
    return f"served on {served}, adapters trained in {how}"


def section(report: dict[str, Any], chart: Path) -> str:
    t = report["timings_s"]
    size = report["sizes"].get("size", "full")
    title = (
        "## Personalization (`loraswarm eval`)"
        if size == "full"
        else (f"## Personalization, {size} size (`loraswarm eval --size {size}`)")
    )
    return "\n".join(
        [
            title,
            "",
            f"Machine: {describe()}. Base model: the default (SmolLM2-135M-Instruct), {numerics(report)}; "
            f"seed {report['settings']['seed']}; whole run {t['total'] / 60:.1f} min "
            f"(ingest {t['ingest']:.0f} s, training {t['train'] / 60:.1f} min"
            + (f" + raw-text arm {t['train_raw'] / 60:.1f} min" if "train_raw" in t else "")
            + f", answering {t['answer'] / 60:.1f} min). Significance: a difference counts only where the "
            "95% bootstrap intervals do not overlap (a conservative test).",
            "",
            "Generated tenants (`loraswarm.eval.corpus`): per company random facts (names, numbers, codes), "
            "processes (steps in a random order) and writing rules; per user private notes, a checklist and "
            "writing preferences. Nothing in them can be guessed, so a right answer was learned from the tenant's data. "
            "Scoring: fact accuracy = an accepted answer appears (normalized, whole words); process recall = gold steps "
            "found, order = longest in-order run of the found steps / found; style = share of the rules followed. "
            "LLaMA-Adapter is compared with LoRA in its own section (`bench:llama_adapter`: the same data, "
            "its conditions llama_company, llama_user, llama_rag and llama_swarm).",
            "",
            markdown(report, chart=chart.as_posix()).rstrip(),
            "",
            "What it shows (a difference counts only where the 95% intervals do not overlap):",
            "",
            *findings(report),
            "",
            size_note(report),
        ]
    )


def size_note(report: dict[str, Any]) -> str:
    """Which size ran: only the full one is the benchmark the intervals were sized for."""
    size = report["sizes"].get("size", "full")
    command = "loraswarm eval" + (f" --size {size}" if size != "full" else "")
    if size == "full":
        return f"Run as `{command}`: the full size."
    return (
        f"Run as `{command}`, not the full size (3 tenants with 2 users each, 150 questions): its "
        "intervals are wider, so a tie here is weaker evidence of no difference than a tie at full size."
    )


# The section compares adapters with retrieval against retrieval alone; a run without both (the
# LLaMA-Adapter comparison, a composer check) would replace the full run's table with a part of it.
PERSONALIZATION_NEEDS = frozenset({"rag", "adapter_rag"})


def section_name(report: dict[str, Any]) -> str:
    """`personalization` for the full size; a smaller size writes a section of its own
    (`personalization-medium`), so a run on a machine where the full size does not fit sits
    beside the full run's table instead of replacing it."""
    size = report["sizes"].get("size", "full")
    return "personalization" if size == "full" else f"personalization-{size}"


def publish_section(report: dict[str, Any], chart_file: Path, benchmarks: Path) -> str | None:
    """Write the run's personalization section when it has the conditions that section compares;
    the section's name, or None."""
    if not set(report["conditions"]) >= PERSONALIZATION_NEEDS:
        return None
    name = section_name(report)
    chart = CHART if name == "personalization" else CHART.with_name(f"chart-{name.split('-', 1)[1]}.png")
    target = benchmarks.parent / chart
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(chart_file, target)
    write_section(benchmarks, name, section(report, chart))
    return name
