"""Whom a specialist may hand off to, and the answer schema that offers exactly them."""

from __future__ import annotations

from datetime import timedelta

from loraswarm.services.specialist.agent import answer_schema, build_prompt, handoff_targets
from loraswarm.shared.envelope import utc_now
from loraswarm.shared.events import SpecialistTask
from loraswarm.shared.tenants import TenantConfig

TENANT = TenantConfig.model_validate(
    {
        "tenant_id": "acme",
        "limits": {"max_handoffs": 1},
        "specialists": [
            {
                "name": "policy",
                "description": "Rules.",
                "instructions": "Answer.",
                "handoffs": ["customer", "billing"],
                "max_new_tokens": 64,
            },
            {"name": "customer", "description": "Tone.", "instructions": "Answer."},
            {"name": "billing", "description": "Money.", "instructions": "Answer."},
        ],
    }
)
POLICY = TENANT.specialist("policy")


def task(peers: list[str], hop: int = 0) -> SpecialistTask:
    return SpecialistTask(
        tenant_id="acme",
        specialist="policy",
        question="Refund?",
        peers=peers,
        hop=hop,
        deadline_at=utc_now() + timedelta(minutes=1),
    )


def test_a_specialist_already_asked_is_not_offered() -> None:
    assert POLICY is not None
    assert handoff_targets(POLICY, task([]), TENANT) == ["customer", "billing"]
    assert handoff_targets(POLICY, task(["customer"]), TENANT) == ["billing"]
    assert handoff_targets(POLICY, task(["customer", "billing"]), TENANT) == []
    assert handoff_targets(POLICY, task([], hop=1), TENANT) == []  # the hop limit


def test_the_schema_and_prompt_offer_exactly_the_targets() -> None:
    assert POLICY is not None
    offered = answer_schema(POLICY, ["billing"])["properties"]["handoff"]
    assert offered == {"anyOf": [{"type": "null"}, {"type": "string", "enum": ["billing"]}]}
    assert answer_schema(POLICY, [])["properties"]["handoff"] == {"type": "null"}
    # the answer is bounded so that the JSON closes within max_new_tokens
    assert answer_schema(POLICY, [])["properties"]["answer"]["maxLength"] == 3 * 64
    prompt = build_prompt(POLICY, task(["customer"]), [], ["billing"], tokenizer_chat=True)
    assert "(billing)" in prompt and "customer" not in prompt
    assert "handoff`." in build_prompt(POLICY, task([]), [], [], tokenizer_chat=True)
