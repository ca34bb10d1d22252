"""The sizes of `loraswarm eval`: `quick` (a test's few minutes), `medium` (the full recipe on one
tenant, within an hour on 2 cores) and `full` (the report's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loraswarm.eval.questions import Kind


@dataclass(frozen=True)
class Size:
    tenants: int
    users_per_tenant: int
    per_kind: int  # questions per kind per tenant
    steps: int  # training steps per adapter
    max_new_tokens: dict[Kind, int]
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    min_train_tokens: int = 96
    # The trainer's quality gate bound for this size's adapters (None: the trainer's default, 2%).
    max_quality_regression: float | None = None


# Tiny adapters on one tenant: every condition runs on the real model, in a few minutes on 2 cores.
QUICK = Size(
    tenants=1,
    users_per_tenant=1,
    per_kind=2,
    steps=4,
    max_new_tokens={"fact": 24, "process": 48, "style": 48},
    hyperparameters={"batch_size": 4, "seq_len": 64, "warmup_steps": 1},
    min_train_tokens=64,
)
# The LoRA recipe of the medium and full sizes, chosen by `loraswarm bench recipe` (BENCHMARKS.md,
# "Training recipe"): rank 16 on every linear layer at 3e-3, 4 passes over each scope's data
# (batch 8), answered 0.67 of a company's fact questions without retrieval where the recipe before
# (rank 8 on q/v at 5e-4, 60 steps of 4) answered none. Epochs, not a fixed count, so a user's
# small scope is not trained many times over; the cap is never reached on the generated corpus.
# LLaMA-Adapters train on the same data, steps and batches at their own rate (runner.train).
RECIPE: dict[str, Any] = {
    "batch_size": 8,
    "epochs": 4,
    "r": 16,
    "lora_alpha": 32,
    "target_modules": ["all-linear"],
    "learning_rate": 3e-3,
}
# The gate's held-out loss rise allowed for `RECIPE`'s adapters. A generated tenant's held-out
# document is random names, numbers and codes: an adapter that learnt the other documents' facts
# predicts them with confidence and so scores unseen random facts worse than the model it started
# from, by design (measured on the AMD machine: northwind's company +7.2%, users +10.5% and +14.2%
# at the trainer's 2%). The eval measures what the adapters answer, so it allows 25% and reports
# every adapter's held-out loss before and after; a wrecked adapter (a NaN, or a loss that soars)
# is still refused, and the leakage gate is unchanged. What a production tenant's bound should be
# is open (BENCHMARKS.md, personalization).
RECIPE_MAX_QUALITY_REGRESSION = 0.25
# The report's size: 3 tenants with 2 users each and 150 questions (18 per kind per tenant; the
# generator has 12 processes, so 14 process questions per tenant), so that 95% intervals can
# separate conditions; adapters trained with `RECIPE` on the builder's examples, and as many for
# the raw-text arm.
FULL = Size(
    tenants=3,
    users_per_tenant=2,
    per_kind=18,
    steps=300,
    max_new_tokens={"fact": 40, "process": 80, "style": 80},
    hyperparameters=RECIPE,
    max_quality_regression=RECIPE_MAX_QUALITY_REGRESSION,
)
# The full size's recipe (the same adapters' recipe, question mix and lengths) on one
# tenant with two users: about a third of the questions, for a run that fits beside other work.
MEDIUM = Size(
    tenants=1,
    users_per_tenant=2,
    per_kind=12,
    steps=FULL.steps,
    max_new_tokens=FULL.max_new_tokens,
    hyperparameters=FULL.hyperparameters,
    max_quality_regression=FULL.max_quality_regression,
)
SIZES = {"quick": QUICK, "medium": MEDIUM, "full": FULL}


def recipe_words(hp: dict[str, Any]) -> str:
    """The training recipe in a few words: "4 epochs (at most 400 steps) of 8, LoRA r16 on all-linear, lr 2e-3"."""
    steps = (
        f"{hp['epochs']:g} epochs (at most {hp['steps']} steps)"
        if hp.get("epochs")
        else f"{hp['steps']} steps"
    )
    batch = f" of {hp['batch_size']}" if "batch_size" in hp else ""
    lora = " ".join(
        part
        for part in (
            f"LoRA r{hp['r']}" if "r" in hp else "",
            "on " + ",".join(hp["target_modules"]) if "target_modules" in hp else "",
            f"at lr {hp['learning_rate']:g}" if "learning_rate" in hp else "",
        )
        if part
    )
    return f"{steps}{batch} each" + (f" ({lora}; a LLaMA-Adapter at its own rate)" if lora else "")
