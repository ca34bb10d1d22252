"""The two pictures of a job: its loss curve and its exposure chart (PNG, matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def loss_curve(losses: Sequence[float], metrics: Mapping[str, float], path: Path, title: str) -> Path:
    """Training loss per step (and its moving average) with the held-out losses as lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = list(range(1, len(losses) + 1))
    ax.plot(steps, losses, color="#9bb7d4", linewidth=1, label="training loss")
    window = max(1, len(losses) // 10)
    if window > 1:
        smooth = [
            sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
            for i in range(len(losses))
        ]
        ax.plot(steps, smooth, color="#1f4e79", linewidth=2, label=f"moving average ({window} steps)")
    if "heldout_loss" in metrics:
        ax.axhline(metrics["heldout_loss"], color="#2e7d32", linestyle="--", label="held-out, adapter")
    if "start_heldout_loss" in metrics:
        ax.axhline(
            metrics["start_heldout_loss"], color="#c62828", linestyle=":", label="held-out, before training"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def exposure_chart(report: Mapping[str, Any], path: Path, title: str) -> Path:
    """Mean exposure per (canaries, model) with each canary as a dot, the bound and the never-seen level."""
    plt = _pyplot()
    owner = [report["owner"]] if report.get("owner") else []
    rows = owner + list(report.get("cross", []))
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(rows) + 2), 4.5))
    for i, row in enumerate(rows):
        if owner and i == 0:  # the owner's own canaries: exposed is what shows the test can see
            colour = "#2e7d32" if row["exposed"] else "#f9a825"
        else:  # anywhere else: exposed is a leak
            colour = "#c62828" if row["exposed"] else "#1f4e79"
        ax.bar(i, row["mean"], color=colour, alpha=0.6, width=0.6)
        ax.scatter([i] * len(row["values"]), row["values"], color=colour, s=12, zorder=3)
        ax.hlines(row["bound"], i - 0.35, i + 0.35, color="black", linestyle="--", linewidth=1)
    ax.axhline(
        report["never_seen_bits"],
        color="grey",
        linestyle=":",
        label=f"never seen ({report['never_seen_bits']:.2f} bits)",
    )
    ax.axhline(
        report["max_measurable_bits"],
        color="grey",
        linewidth=0.5,
        label=f"highest measurable ({report['max_measurable_bits']:.1f})",
    )
    ax.plot(
        [], [], color="black", linestyle="--", linewidth=1, label="bound (never seen exceeds it with prob. α)"
    )
    labels = [f"{r['canaries']}\nunder {r['model']}" for r in rows]
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("exposure (bits)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
