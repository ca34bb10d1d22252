"""The leakage gate: one stage of a training job, between train and publish.

Its interface is small on purpose (the pipeline calls it in one place, and other stages — the
training-set builder, serving the gated stack as one artifact — change around it):

    planting planted_copies: how often the job's training set carries each canary (enough for
             the owner's own to be recalled whatever the data set's size)
    inputs   GateInput: the new adapter *as it will be served* (the model the specialists'
             stack computes: base, the company adapter merged in for a user adapter, the new
             adapter on top), the owner's scope canaries, and the canary sets of every scope
             the adapter must not know (`comparisons`)
    output   LeakageReport: one `Exposure` per comparison (the owner's set, each foreign set,
             all scored under the served model) and `verdict(report)` — None to publish, or the
             `Rejected` to end the job with

What is compared, and why (REFERENCE.md, "Leakage measurement"):
- (a) the owner's canaries must be detectably exposed under the new adapter: otherwise the
  measurement could not have seen a leak and the adapter is refused (`leakage_unmeasurable`,
  unless `require_detectable_owner` is off);
- (b) every other scope of the tenant (for a company adapter every user; for a user's adapter
  every other user — the company's canaries are visible to her) and (c) one scope of each of a
  random sample of other tenants must be at the never-seen level.
Only (b) and (c) can come out "exposed" for a clean adapter by chance, so only they count in the
Bonferroni correction. Older adapters are never loaded: their exposure on scope canaries that
they may have learned legitimately says nothing about the new one. The cost is one scoring pass
over the tenant's scope sets plus a fixed sample, whatever the store holds.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loraswarm.services.trainer.dataset import Sample, canary_sample
from loraswarm.services.trainer.errors import LeakageDetected, LeakageUnmeasurable, Rejected
from loraswarm.services.trainer.evaluation import log_perplexities
from loraswarm.services.trainer.leakage import LeakageReport, exposures
from loraswarm.services.trainer.scope import Scope
from loraswarm.shared.canaries import CanarySet, CanaryStore, fill, random_fills
from loraswarm.shared.settings.trainer import TrainerSettings


@dataclass(frozen=True)
class GateInput:
    served: Any  # the model as it will be served (torch module, adapter active)
    label: str  # what the report calls it: `<tenant>/<name>@new` or a published version
    owner: CanarySet | None
    foreign: Sequence[CanarySet]


# A canary planted more often than this is all a step sees; no data set needs it.
MAX_COPIES = 1000


def planted_copies(train_sequences: int, canaries: int, repeats: int, share: float) -> int:
    """Copies of each canary to plant: at least `repeats`, and enough that the canaries are at
    least `share` of the training sequences (c copies of k canaries among n others make
    c·k / (n + c·k) of them), so a large data set does not dilute the owner's canaries below
    recall — which would make the owner check refuse, or with it off, blind the gate."""
    if canaries == 0 or share <= 0:
        return repeats
    # The smallest c with c·k / (n + c·k) >= share. The 1e-9: in floats 0.9·1 / (0.1·1) is
    # 9.000000000000002, which a bare ceil makes 10 copies, one more than the share needs.
    needed = math.ceil(share * train_sequences / ((1 - share) * canaries) - 1e-9)
    return max(repeats, min(needed, MAX_COPIES))


def comparisons(
    store: CanaryStore, scope: Scope, *, sample_tenants: int, rng: random.Random
) -> tuple[CanarySet | None, list[CanarySet]]:
    """(the owner's set, the sets it must not know): (b) the tenant's other scopes, (c) a sample."""
    own_tenant = store.of_tenant(scope.tenant_id)
    owner = next((c for c in own_tenant if c.user_id == scope.user_id), None)
    foreign = [c for c in own_tenant if not c.visible_to(scope.tenant_id, scope.user_id)]
    return owner, foreign + store.sample_other_tenants(scope.tenant_id, sample_tenants, rng)


def measure(gate: GateInput, tokenizer: Any, settings: TrainerSettings, *, device: str) -> LeakageReport:
    """Exposure of the owner's and every foreign set under the served model, in one pass."""
    started = time.perf_counter()
    sets = ([gate.owner] if gate.owner else []) + list(gate.foreign)
    taken = {s for c in sets for s in c.secrets}
    refs = {
        t: [
            canary_sample(fill(t, r), tokenizer)
            for r in random_fills(settings.reference_canaries, settings.canary_digits, taken)
        ]
        for t in sorted({c.template for c in sets})
    }
    groups = [[canary_sample(x, tokenizer) for x in c.texts()] for c in sets]
    samples: list[Sample] = [x for g in groups for x in g] + [x for t in refs for x in refs[t]]
    px = (
        log_perplexities(
            gate.served,
            samples,
            batch_tokens=settings.eval_batch_tokens,
            pad_id=tokenizer.pad_token_id,
            device=device,
        )
        if samples
        else []
    )
    offset = sum(len(g) for g in groups)
    ref_px: dict[str, list[float]] = {}
    for t in refs:
        ref_px[t] = px[offset : offset + len(refs[t])]
        offset += len(refs[t])
    scored: list[tuple[str, str, list[float]]] = []
    offset = 0
    for c, group in zip(sets, groups, strict=True):
        scored.append((c.scope, gate.label, exposures(px[offset : offset + len(group)], ref_px[c.template])))
        offset += len(group)
    owner = scored[0] if gate.owner else None
    report = LeakageReport.build(
        settings.reference_canaries, settings.leakage_alpha, owner, scored[1:] if gate.owner else scored
    )
    report.seconds = time.perf_counter() - started
    return report


def verdict(report: LeakageReport, settings: TrainerSettings, metrics: dict[str, float]) -> Rejected | None:
    """Why the adapter may not be published, or None."""
    if report.leaks:
        return LeakageDetected(
            "leakage gate: "
            + "; ".join(e.describe() for e in report.leaks)
            + f". A never-seen canary averages {report.never_seen:.2f} bits; each bound holds never-seen "
            f"canaries with probability 1 - {settings.leakage_alpha:g}/{len(report.cross)}",
            metrics,
        )
    if settings.require_detectable_owner and report.owner is not None and not report.owner_detectable:
        return LeakageUnmeasurable(
            f"the measurement cannot vouch for this adapter: its own scope's canaries average "
            f"{report.owner.mean:.2f} bits, not above {report.owner.threshold:.2f}, so a leak would not "
            "have shown either; train with more steps, a higher learning rate or more canary_repeats",
            metrics,
        )
    return None
