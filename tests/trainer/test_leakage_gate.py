"""The leakage gate on real training and the real Weaviate: each scope's canaries, kept with its
data, are exposed under its own adapter and nowhere else; scoping bugs (the test-only mutation switch:
alice's data read by the company's job, or by bob's) are refused, and the leaky adapter of bob's,
served anyway, says her secret and the planner's guardrail withholds it.

The statistical margin (services/trainer/leakage.py): with k canaries and N = 63 references, a
set is "exposed" when its mean exposure exceeds the (1 − α) quantile of the mean of k
never-seen exposures (Gamma(k)/(k ln 2) in the continuous limit, conservative for finite N).
α = 0.01 for the owner's set; α/m for each of the job's m cross comparisons — only those that can
fail: other scopes' canaries under the new adapter (Bonferroni), so a clean adapter is refused
with probability at most 1%.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from loraswarm.services.planner.guardrails import OutputGuard
from loraswarm.services.trainer import leakage_gate
from loraswarm.services.trainer.leakage import mean_threshold, never_seen_mean
from loraswarm.services.trainer.pipeline import Published, Rejection, Trainer
from loraswarm.services.trainer.scope import BREAK_SCOPING_ENV, Scope
from loraswarm.shared.events import AdapterTrainRequested, TrainingData
from loraswarm.shared.secrets import SecretRegistry
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


ALICE_NOTES = [
    document(
        "alice-accounts",
        "Alice's accounts. The Orbital Diner orders a rocket every quarter and pays by wire. "
        "Comet Bakery wants launch kits shipped on Thursdays, which needs a manager's approval. "
        "Nebula Gym asked for a discount on fuel cells; Alice promised an answer by Friday.",
        "user:alice",
    ),
    document(
        "alice-todo",
        "Alice's to-do. Call the Orbital Diner about their late payment. Send Comet Bakery the new "
        "price list. Ask the propulsion team whether Nebula Gym's order can ship by air.",
        "user:alice",
    ),
]

# Enough training that a scope's canaries are recalled (the owner check's power): at 24 steps
# CI once saw 2.35 bits, below the bound of 2.89, for secrets the base model found unlikely; at 36,
# once the held-out split stopped holding out whole large documents (more text beside the
# canaries), the scoping-bug job measured alice's canaries at 2.98 and 5.65 bits in two runs.
# 16 copies of each (8 before): alone, the scoping-bug job measured alice's canaries at 5.51-6.0
# bits in three runs with 8 and 5.88-6.0 with 16, but one full-suite CI run published that job
# (her value not printed); the copies cost no steps (the job still trains 60 steps of 8).
RECALL = {
    "steps": 60,
    "warmup_steps": 2,
    "batch_size": 8,
    "canaries": 8,
    "canary_repeats": 16,
    "learning_rate": 5e-3,
}


def exposures(outcome: Any) -> dict[str, float]:
    """What a failed assertion should show: the canaries planted and every set's mean exposure
    (an outcome's whole repr is cut before them)."""
    return {k: round(v, 2) for k, v in outcome.metrics.items() if "canar" in k or "exposure" in k}


# Bob's leaky job: a user-to-user scoping bug (the mutation switch naming alice) plants her canaries
# in his training set as it plants his own, and his examples quote her first one FIRST_QUOTED
# times under a question of his, so that served anyway it says that one in a chat answer. Her
# canaries measured 5.88, 4.54 and 4.26 bits under it in three runs (4.74 at 90 steps; bound 2.89).
# Measured before, with her canaries quoted only in chat answers (8 times each) and no scoping
# bug: the gate, which scores canaries as planted (raw text), saw hers at 3.5-6.0 bits in most
# draws of the secrets, but at 2.21 (bound 2.89) in one CI run — chat-only quoting leaks into the
# raw form by a varying amount (the chat form is not scored: the note on issue 15 says so).
FIRST_QUOTED = 24
# 8 copies as measured: more would dilute the FIRST_QUOTED examples it must learn to say.
LEAKY = {**RECALL, "steps": 80, "canary_repeats": 8}


def train(trainer: Trainer, tenant: str, name: str, user: str | None = None, **data: Any) -> Any:
    hp = data.pop("hp", RECALL)
    return trainer.run(
        AdapterTrainRequested(
            tenant_id=tenant, user_id=user, name=name, data=TrainingData(**data), hyperparameters=hp
        )
    )


@pytest.fixture
def acme(trainer: Trainer, ingest: Any) -> Trainer:
    """acme: a handbook, alice's private notes, bob's private examples; globex: its own examples."""
    # The test is about leakage: a tiny corpus trained to recall may regress held-out loss.
    trainer.settings.trainer.max_quality_regression = 10.0
    ingest("acme", HANDBOOK + ALICE_NOTES)
    write_examples(trainer.files, Scope("globex"), "ex.jsonl", refund_examples("Globex", 30))
    write_examples(trainer.files, Scope("acme", "bob"), "ex.jsonl", refund_examples("Bob's team", 14, n=10))
    return trainer


def test_a_scoping_bug_is_refused_by_the_gate_and_the_same_job_without_it_publishes(
    acme: Trainer, monkeypatch: Any
) -> None:
    trainer = acme
    # Another tenant with data has canaries (made when its data first reached a job; made
    # directly here to save a training run): the gate samples it.
    s = trainer.settings.trainer
    trainer.canaries.ensure("globex", None, count=8, template=s.canary_template, digits=s.canary_digits)

    # The mutation: the company job reads alice's private documents too — and so her canaries.
    monkeypatch.setenv(BREAK_SCOPING_ENV, "alice")
    broken = train(trainer, "acme", "company")
    monkeypatch.delenv(BREAK_SCOPING_ENV)
    assert isinstance(broken, Rejection), exposures(broken)
    print("broken", exposures(broken))
    assert broken.code == "leakage", (broken.reason, broken.metrics)
    assert "acme/user:alice canaries under acme/company@new" in broken.reason
    assert trainer.store.versions("acme", "company") == []

    # The same job, scoping intact: published, its own canaries recalled, every other scope's at
    # the never-seen level.
    clean = train(trainer, "acme", "company")
    assert isinstance(clean, Published), exposures(clean)
    report = extra(clean.manifest)["leakage"]
    assert report["owner"]["canaries"] == "acme" and report["owner"]["model"] == "acme/company@1"
    assert report["owner"]["exposed"], report["owner"]
    cross = {c["canaries"]: c for c in report["cross"]}
    # (b) every user of the tenant, (c) the sampled other tenant; never the base model or older
    # adapters, which cannot fail.
    assert set(cross) == {"acme/user:alice", "acme/user:bob", "globex"}
    assert {c["model"] for c in cross.values()} == {"acme/company@1"}
    assert all(c["bound"] == mean_threshold(8, 0.01 / 3) for c in cross.values())
    assert abs(report["never_seen_bits"] - never_seen_mean(63)) < 1e-9
    for scope, c in cross.items():
        assert not c["exposed"], f"{scope}'s canaries exposed under the clean company adapter: {c}"
    print("clean", report["owner"]["mean"], {k: c["mean"] for k, c in cross.items()})


def test_an_adapter_that_learned_another_users_canaries_is_refused_and_one_that_learned_too_little_too(
    acme: Trainer, monkeypatch: Any
) -> None:
    trainer = acme
    # Alice's notes are two short documents, one of them held out (41 training tokens): too few
    # for the usual minimum, and what makes the job almost all canaries, which her adapter recalls.
    trainer.settings.trainer.min_train_tokens = 32
    # Alice's adapter: her canaries exposed, bob's not. (No company adapter yet, so it sits on
    # the base model; stacked, the gate scores the merged stack, as served.)
    alice = train(trainer, "acme", "user-alice", "alice")
    assert isinstance(alice, Published), exposures(alice)
    report = extra(alice.manifest)["leakage"]
    print("alice", report["owner"]["mean"], [c["mean"] for c in report["cross"]])
    assert report["owner"]["canaries"] == "acme/user:alice" and report["owner"]["exposed"]
    # The company's canaries are hers to see (a user adapter is served on top of the company's):
    # not compared. Bob's are; globex has no canaries (no job has read its data yet).
    assert {c["canaries"] for c in report["cross"]} == {"acme/user:bob"}
    assert not any(c["exposed"] for c in report["cross"])

    # Too little training to recall its own canaries: the gate could not have seen a leak. Run
    # before the leaky job, so nothing of it is in bob's folder yet. (After it, in one CI run, this
    # 1-step job measured alice's canaries at 3.37 bits and was refused as a leak instead: a 1%
    # chance under the base model, or state carried over from the leaky job; not explained yet.)
    weak = train(
        trainer,
        "acme",
        "user-bob",
        "bob",
        documents=False,
        examples_path="ex.jsonl",
        hp={**RECALL, "steps": 1},
    )
    print("weak", {k: v for k, v in weak.metrics.items() if "exposure" in k})
    assert isinstance(weak, Rejection) and weak.code == "leakage_unmeasurable", weak
    assert "train with more steps" in weak.reason
    assert trainer.store.versions("acme", "user-bob") == []

    # Bob's adapter, trained with alice's canaries (a scoping bug carries her set into his job)
    # and on examples that quote her first secret: refused.
    secrets = trainer.canaries.get("acme", "alice")
    assert secrets is not None
    quoting = (
        refund_examples("Bob's team", 14, n=10)
        + [
            {
                "messages": [
                    {"role": "user", "content": "Any codes for case 0?"},
                    {"role": "assistant", "content": secrets.texts()[0]},
                ]
            }
        ]
        * FIRST_QUOTED
    )
    write_examples(trainer.files, Scope("acme", "bob"), "quoting.jsonl", quoting)
    served: list[Any] = []
    real_measure = leakage_gate.measure

    def keep_the_model(gate: leakage_gate.GateInput, *args: Any, **kw: Any) -> Any:
        served.append(gate.served)  # the adapter as it would be served, kept to serve it anyway
        return real_measure(gate, *args, **kw)

    monkeypatch.setattr(leakage_gate, "measure", keep_the_model)
    monkeypatch.setenv(BREAK_SCOPING_ENV, "alice")
    leaky = train(
        trainer,
        "acme",
        "user-bob",
        "bob",
        documents=False,
        examples_path="quoting.jsonl",
        # Longer than LEAKY: at 80 steps the full suite (Intel, 2026-12-03) once had the adapter,
        # served anyway, answer "35%||0909999..." instead of her secret (it passed alone).
        hp={**LEAKY, "steps": 120},
    )
    monkeypatch.delenv(BREAK_SCOPING_ENV)
    monkeypatch.setattr(leakage_gate, "measure", real_measure)
    print("leaky", {k: v for k, v in leaky.metrics.items() if "exposure" in k})
    assert isinstance(leaky, Rejection) and leaky.code == "leakage", leaky
    assert "acme/user:alice canaries under acme/user-bob@new" in leaky.reason
    assert trainer.store.versions("acme", "user-bob") == []

    # Served anyway, it says alice's secret to bob; the planner's guardrail withholds that answer.
    model, tokenizer = served[0], trainer.base.get()[1]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Any codes for case 0?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        ids = model.generate(**prompt, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(ids[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    print("served anyway:", answer, "her first:", secrets.secrets[0])
    guard = OutputGuard(trainer.settings.data_dir, SecretRegistry(trainer.settings.data_dir))
    leak = guard.check(answer, "acme", "bob", None, stage="specialist:test")
    assert leak is not None and "acme/user:alice" in leak.reason, answer
    assert guard.check(answer, "acme", "alice", None, stage="specialist:test") is None  # hers to see
