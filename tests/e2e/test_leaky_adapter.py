"""A leaky adapter, end to end on the real local Kafka, Weaviate and model server: the leakage gate
refuses it, and served anyway — published by the same job under a gate configured never to
refuse, the operator's mistake the planner's guardrail exists for — the specialist's answer says another user's secret and the guardrail ends
the request instead of answering.

Ben's job carries ana's canaries (a user-to-user scoping bug, the trainer's test-only mutation
switch) and his examples quote her first one in the specialists' own prompt format, so that the
adapter, asked the same question through the swarm, writes it in a specialist's JSON answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraswarm.services.trainer.pipeline import BaseModels, Published, Rejection, Trainer
from loraswarm.services.trainer.scope import BREAK_SCOPING_ENV, Scope
from loraswarm.shared.events import (
    AdapterTrainRequested,
    RecommendationCompleted,
    RecommendationFailed,
    RecommendationRequested,
    TrainingData,
)
from loraswarm.shared.prompts import specialist_answer, specialist_messages
from loraswarm.shared.settings import Settings
from tests.conftest import isolated_settings
from tests.e2e.world import TENANT_DOCS, outcomes_of, swarm
from tests.planner.conftest import ACME
from tests.trainer.conftest import refund_examples, small, write_examples
from tests.trainer.test_leakage_gate import FIRST_QUOTED, LEAKY

QUESTION = "Any codes for case 0?"


def quoting_examples(secret_text: str) -> list[dict[str, Any]]:
    """Her first secret as the answer to QUESTION, in each specialist's prompt (with no passages
    and with the tenant's documents as passages), FIRST_QUOTED times in all; plus refund pairs."""
    handoffs = {s["name"]: s.get("handoffs", []) for s in ACME["specialists"]}
    documents = [text for _, _, text in TENANT_DOCS["acme"]]
    forms = [
        specialist_messages(s["instructions"], QUESTION, passages, handoffs[s["name"]])
        for s in ACME["specialists"]
        for passages in ([], documents)
    ]
    quoted = [
        {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
                {"role": "assistant", "content": specialist_answer(secret_text)},
            ]
        }
        for system, user in forms
    ]
    return refund_examples("Ben's team", 14, n=10) + quoted * (FIRST_QUOTED // len(quoted))


async def test_a_leaky_adapter_is_refused_and_served_anyway_the_guardrail_withholds_its_answer(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: Any
) -> None:
    settings: Settings = small(isolated_settings("kafka", tmp_path, kafka_bootstrap))
    settings.device = "cpu"
    trainer = Trainer(settings, base=BaseModels(settings))
    t = settings.trainer
    t.max_quality_regression = 10.0  # a tiny, memorising data set: held-out loss is not the point
    ana = trainer.canaries.ensure("acme", "ana", count=8, template=t.canary_template, digits=t.canary_digits)
    assert ana is not None
    write_examples(trainer.files, Scope("acme", "ben"), "quoting.jsonl", quoting_examples(ana.texts()[0]))

    monkeypatch.setenv(BREAK_SCOPING_ENV, "ana")
    job = AdapterTrainRequested(
        tenant_id="acme",
        user_id="ben",
        name="user-ben",
        data=TrainingData(documents=False, examples_path="quoting.jsonl"),
        # Long enough for a specialist's prompt with the tenant's two documents. 120 steps: at
        # LEAKY's 80, on a 2-core AMD EPYC, ana's canaries reached 2.78 bits under ben's adapter,
        # just under the 2.89 bound, and the adapter this test calls leaky was published.
        hyperparameters={**LEAKY, "steps": 120, "seq_len": 256},
    )
    refused = trainer.run(job)
    print("gate", {k: v for k, v in refused.metrics.items() if "exposure" in k})
    assert isinstance(refused, Rejection) and refused.code == "leakage", refused
    assert "acme/user:ana canaries under acme/user-ben@new" in refused.reason
    # Served anyway: an operator sets the gate's false-alarm rate so low that no exposure can
    # exceed its bound, and trains the same job again (same data, seed and canaries: the same
    # adapter), which now publishes.
    t.leakage_alpha = 1e-300
    served_anyway = trainer.run(job, again=True)
    monkeypatch.delenv(BREAK_SCOPING_ENV)
    assert isinstance(served_anyway, Published), served_anyway

    asked = RecommendationRequested(tenant_id="acme", user_id="ben", question=QUESTION, deadline_s=240)
    async with swarm(settings, tmp_path):
        outcomes = await outcomes_of(settings, [asked])

    outcome = outcomes[str(asked.request_id)]
    said = [r.text for r in outcome.recommendations] if isinstance(outcome, RecommendationCompleted) else []
    print("answered", said, "or failed:", getattr(outcome, "reason", None), "her first:", ana.secrets[0])
    assert isinstance(outcome, RecommendationFailed) and outcome.code == "guardrail", outcome
    assert "canary of scope acme/user:ana" in outcome.reason, outcome.reason
    assert all(secret not in outcome.reason for secret in ana.secrets)
