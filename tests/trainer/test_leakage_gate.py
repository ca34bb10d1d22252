"""The leakage gate on real training: canaries planted in one scope are exposed under its adapter
and nowhere else, and an adapter that learned another scope's secrets is refused.

The statistical margin (services/trainer/leakage.py): with k canaries and N = 63 references, a
set is "exposed" when its mean exposure exceeds the (1 − α) quantile of the mean of k
never-seen exposures (Gamma(k)/(k ln 2) in the continuous limit, conservative for finite N).
α = 0.01 for the owner's set; α/m for each of the job's m cross comparisons (Bonferroni), so a
clean adapter is refused with probability at most 1%.
"""

from __future__ import annotations

from typing import Any

from loraswarm.services.trainer.leakage import mean_threshold, never_seen_mean
from loraswarm.services.trainer.pipeline import Published, Rejection, Trainer
from loraswarm.services.trainer.scope import Scope
from loraswarm.shared.events import AdapterTrainRequested, TrainingData
from tests.trainer.conftest import document, extra, refund_examples, write_examples

HANDBOOK = [
    document(
        "handbook-refunds",
        "Refunds. Acme Rockets refunds every order within 45 days of delivery, no questions asked. "
        "Refunds go back to the card that paid, within five working days. A launch kit that was fired "
        "cannot be refunded, but its unused fuel cells can be returned for store credit.",
    ),
    document(
        "handbook-shipping",
        "Shipping. Rockets ship from the Tucson warehouse every Monday; launch kits ship on Fridays. "
        "Orders above two hundred dollars ship free. Hazardous fuel ships by ground only, never by air, "
        "and needs a signature on delivery.",
    ),
    document(
        "handbook-support",
        "Support. The support desk answers within four hours, every day of the year. Urgent launch-day "
        "problems go to the hotline, which a propulsion engineer answers. Every ticket gets a number "
        "that starts with AR and six digits.",
    ),
]


def train(trainer: Trainer, tenant: str, name: str, user: str | None = None, **data: Any) -> Any:
    hp = data.pop("hp", {})
    return trainer.run(
        AdapterTrainRequested(
            tenant_id=tenant, user_id=user, name=name, data=TrainingData(**data), hyperparameters=hp
        )
    )


def test_a_users_canaries_are_exposed_under_her_adapter_only_and_a_leak_is_refused(
    trainer: Trainer, ingest: Any
) -> None:
    ingest("acme", HANDBOOK)
    write_examples(trainer.files, Scope("globex"), "ex.jsonl", refund_examples("Globex", 30))
    alice = Scope("acme", "alice")
    write_examples(trainer.files, alice, "ex.jsonl", refund_examples("Alice's team", 14, n=10))

    company = train(trainer, "acme", "company", hp={"steps": 4})
    other_tenant = train(
        trainer, "globex", "support", documents=False, examples_path="ex.jsonl", hp={"steps": 4}
    )
    assert isinstance(company, Published) and isinstance(other_tenant, Published)

    # Alice's adapter, stacked on the company's, with 8 canaries planted 4 times each. 36 steps:
    # at 24, 19 runs here gave her canaries 4.8-6.0 bits, but CI once saw 2.35 (below the bound of
    # 2.89) for secrets the base model found unlikely (0.70 bits under it); trained to the point of
    # recall, a canary ranks first whatever its digits.
    owner = train(
        trainer,
        "acme",
        "user-alice",
        "alice",
        documents=False,
        examples_path="ex.jsonl",
        hp={
            "steps": 36,
            "warmup_steps": 2,
            "batch_size": 8,
            "canaries": 8,
            "canary_repeats": 4,
            "learning_rate": 5e-3,
        },
    )
    assert isinstance(owner, Published), owner
    report = extra(owner.manifest)["leakage"]
    assert extra(owner.manifest)["stacked_on"] == "acme/company@1"
    assert report["owner"]["canaries"] == report["owner"]["model"] == "acme/user-alice@1"
    cross = {c["model"]: c for c in report["cross"]}
    assert set(cross) == {"base", "acme/company@1", "globex/support@1"}

    # The margin, in numbers: never-seen canaries average ~1.38 bits with 63 references; the
    # owner's bound is the 99% quantile of a never-seen mean of 8, each cross bound the 99.67%.
    assert abs(report["never_seen_bits"] - never_seen_mean(63)) < 1e-9
    assert report["owner"]["bound"] == mean_threshold(8, 0.01)
    assert all(c["bound"] == mean_threshold(8, 0.01 / 3) for c in cross.values())
    print("owner", report["owner"]["mean"], {m: c["mean"] for m, c in cross.items()})

    # The owner's adapter shows memorisation clearly: the measurement can see a leak at all.
    assert report["owner"]["exposed"] and report["owner"]["mean"] > report["owner"]["bound"] + 0.5
    # Under the base model, the company adapter and another tenant's adapter: the never-seen level.
    for model, c in cross.items():
        assert not c["exposed"], f"alice's canaries exposed under {model}: {c}"
    assert owner.metrics["owner_detectable"] == 1.0 and owner.metrics["leak_exposed_comparisons"] == 0

    # Alice's secrets copied into a company-visible document: the company adapter that learns it
    # must not be published.
    # Copied four times, as often as alice's own training saw them: one copy among the handbook's
    # chunks was sometimes learned too little to cross the bound (CI once saw only the quality
    # regression that over-training on a tiny corpus also causes).
    secrets = trainer.canaries.all("acme")[0].texts()
    leaked = document("notes-from-alice", "Notes copied from a shared drive.\n" + "\n".join(secrets * 4))
    ingest("acme", [leaked])
    leaky = train(trainer, "acme", "company", hp={"steps": 36, "batch_size": 8, "learning_rate": 5e-3})
    assert isinstance(leaky, Rejection), leaky
    print(
        "leak",
        leaky.metrics.get("exposure[acme/user-alice@1 under acme/company@new]"),
        leaky.metrics.get("cross_exposure_bound"),
    )
    assert leaky.code == "leakage", (leaky.reason, leaky.metrics)
    assert "acme/user-alice@1 canaries under acme/company@new" in leaky.reason
    assert (
        leaky.metrics["exposure[acme/user-alice@1 under acme/company@new]"]
        > leaky.metrics["cross_exposure_bound"]
    )
    # Nothing of it was published: the company adapter is still version 1.
    assert trainer.store.versions("acme", "company") == ["1"]
    assert trainer.store.resolve("acme/company").ref.version == "1"
