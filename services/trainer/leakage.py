"""The leakage measurement: canaries and their exposure (Carlini et al. 2019, "The Secret Sharer").

A canary is a fixed template with a random fill r from R (`digits` random digits, |R| = 10^digits).
Its log-perplexity under a model is Px = −Σ log2 Pr(x_i | x_<i). Its rank is its position among
candidates ordered by Px, and exposure = log2|R| − log2 rank. Ranking against all of R is out of
reach, so a canary is ranked among itself and N *reference* canaries, fills drawn from R that were
never planted anywhere (the interpolation estimate):

    rank     = 1 + |{references with Px ≤ Px(canary)}|        (1 … N+1)
    exposure = log2(N+1) − log2(rank)                          (0 … log2(N+1) bits)

A canary the model never saw is exchangeable with the references, so its rank is uniform on
1 … N+1 and its expected exposure is log2(N+1) − log2((N+1)!)/(N+1) → log2 e ≈ 1.44 bits.

The statistical margin. For k never-seen canaries, exposure = −log2 U with U uniform in the
continuous limit, i.e. Exp(1)/ln 2, so the mean of k exposures is Gamma(k, 1)/(k ln 2). A set of
canaries is called *exposed* under a model when its mean exposure exceeds the (1 − α) quantile
of that distribution. With a finite reference set the rank is uniform on 1 … N+1, which makes
exposure stochastically smaller than in the continuous limit, so the test errs on the safe side:
a never-seen set is called exposed with probability at most α. One job makes m comparisons that
must come out "not exposed" — every other scope's canaries under the new adapter, the ones that
can fail (services/trainer/leakage_gate.py) — each tested at α/m (Bonferroni), so a correct
adapter is refused with probability at most α. The owner's own canaries are tested at α alone:
exposed there means the measurement can see memorisation at all.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from loraswarm.shared.canaries import random_fills as draw_secrets

LOG2E = 1 / math.log(2)

__all__ = ["Exposure", "LeakageReport", "draw_secrets", "exposures", "mean_threshold", "never_seen_mean"]


def exposures(canary_px: Sequence[float], reference_px: Sequence[float]) -> list[float]:
    """Exposure in bits of each canary, ranked among the references (Px in bits, lower = likelier)."""
    ordered = sorted(reference_px)
    top = math.log2(len(ordered) + 1)
    return [top - math.log2(1 + bisect.bisect_right(ordered, px)) for px in canary_px]


def never_seen_mean(references: int) -> float:
    """Expected exposure of a never-seen canary ranked among `references` references."""
    n = references + 1
    return math.log2(n) - math.lgamma(n + 1) / math.log(2) / n


def _erlang_tail(k: int, x: float) -> float:
    """P(S > x) for S a sum of k independent Exp(1): e^-x Σ_{j<k} x^j / j!."""
    if x <= 0:
        return 1.0
    return sum(math.exp(-x + j * math.log(x) - math.lgamma(j + 1)) for j in range(k))


def mean_threshold(k: int, alpha: float) -> float:
    """The mean exposure (bits) that k never-seen canaries exceed with probability α."""
    assert k >= 1 and 0 < alpha < 1
    lo, hi = 0.0, float(k)
    while _erlang_tail(k, hi) > alpha:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if _erlang_tail(k, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi / k * LOG2E


@dataclass(frozen=True)
class Exposure:
    """The exposures of one set of canaries under one model, and the bound its mean is held to."""

    canaries: str  # whose canaries: a scope (`<tenant>` or `<tenant>/user:<id>`)
    model: str  # the adapter they were scored under, as served (`@new` before publishing)
    values: tuple[float, ...]
    threshold: float

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def exposed(self) -> bool:
        return self.mean > self.threshold

    def describe(self) -> str:
        return (
            f"{self.canaries} canaries under {self.model}: mean exposure {self.mean:.2f} bits "
            f"(max {self.max:.2f}; bound {self.threshold:.2f})"
        )


@dataclass
class LeakageReport:
    references: int
    alpha: float
    owner: Exposure | None = None
    cross: list[Exposure] = field(default_factory=list)
    seconds: float = 0.0  # time the measurement took

    @property
    def never_seen(self) -> float:
        return never_seen_mean(self.references)

    @property
    def max_exposure(self) -> float:
        return math.log2(self.references + 1)

    @property
    def leaks(self) -> list[Exposure]:
        return [e for e in self.cross if e.exposed]

    @property
    def owner_detectable(self) -> bool:
        return self.owner is not None and self.owner.exposed

    @classmethod
    def build(
        cls,
        references: int,
        alpha: float,
        owner: tuple[str, str, Sequence[float]] | None,
        cross: Sequence[tuple[str, str, Sequence[float]]],
    ) -> LeakageReport:
        """Thresholds: α for the owner, α/m for each of the m cross comparisons."""
        m = max(len(cross), 1)
        report = cls(references, alpha)
        if owner is not None and owner[2]:
            report.owner = Exposure(owner[0], owner[1], tuple(owner[2]), mean_threshold(len(owner[2]), alpha))
        report.cross = [
            Exposure(c, model, tuple(v), mean_threshold(len(v), alpha / m)) for c, model, v in cross if v
        ]
        return report

    def metrics(self) -> dict[str, float]:
        out = {
            "leak_references": float(self.references),
            "leak_alpha": self.alpha,
            "leak_never_seen_bits": self.never_seen,
            "leak_max_measurable_bits": self.max_exposure,
            "leak_comparisons": float(len(self.cross)),
            "leak_exposed_comparisons": float(len(self.leaks)),
            "leak_gate_seconds": self.seconds,
        }
        if self.owner is not None:
            out |= {
                "owner_exposure_mean": self.owner.mean,
                "owner_exposure_min": min(self.owner.values),
                "owner_exposure_bound": self.owner.threshold,
                "owner_detectable": float(self.owner_detectable),
            }
        if self.cross:
            worst = max(self.cross, key=lambda e: e.mean - e.threshold)
            out |= {
                "cross_exposure_max_mean": max(e.mean for e in self.cross),
                "cross_exposure_bound": worst.threshold,
            }
            for e in self.cross:
                out[f"exposure[{e.canaries} under {e.model}]"] = e.mean
        return out

    def to_dict(self) -> dict[str, object]:
        def one(e: Exposure) -> dict[str, object]:
            return {
                "canaries": e.canaries,
                "model": e.model,
                "values": list(e.values),
                "mean": e.mean,
                "bound": e.threshold,
                "exposed": e.exposed,
            }

        return {
            "references": self.references,
            "alpha": self.alpha,
            "never_seen_bits": self.never_seen,
            "max_measurable_bits": self.max_exposure,
            "owner": one(self.owner) if self.owner else None,
            "cross": [one(e) for e in self.cross],
        }
