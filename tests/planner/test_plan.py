"""The smallest plan: no LLM call when every specialist fits (one, always); otherwise names only,
each asked the question."""

from __future__ import annotations

import json

from loraswarm.services.planner.llm import PrimaryLLM
from loraswarm.services.planner.plan import make_plan
from loraswarm.shared.settings import OrchestrationSettings
from loraswarm.shared.tenants import TenantConfig
from tests.planner.conftest import ACME
from tests.planner.scripted_llm import Script, serve

QUESTION = "Can I refund a tent after 20 days, and who handles large claims?"


async def test_a_tenant_with_one_specialist_is_planned_without_the_llm() -> None:
    policy = {**ACME["specialists"][0], "handoffs": []}
    one = TenantConfig.model_validate({**ACME, "specialists": [policy], "default_plan": []})
    script = Script()
    with serve(script) as url:
        llm = PrimaryLLM(OrchestrationSettings(primary_llm_base_url=url))
        outcome = await make_plan(llm, one, QUESTION, [], max_tokens=32, timeout_s=2.0)
        await llm.aclose()
    assert script.requests == []  # no LLM call at all
    assert [(t.specialist, t.question) for t in outcome.tasks] == [("policy", QUESTION)]
    assert outcome.usage.input_tokens == 0 and not outcome.used_default


async def test_with_planning_auto_specialists_that_all_fit_answer_without_the_llm() -> None:
    auto = TenantConfig.model_validate({**ACME, "planning": "auto"})  # 2 specialists, max 2
    crowded = TenantConfig.model_validate({**ACME, "planning": "auto", "limits": {"max_specialists": 1}})
    script = Script([json.dumps({"specialists": ["support"]})])
    with serve(script) as url:
        llm = PrimaryLLM(OrchestrationSettings(primary_llm_base_url=url))
        outcome = await make_plan(llm, auto, QUESTION, [], max_tokens=32, timeout_s=2.0)
        assert script.requests == []  # nothing to choose: no LLM call
        chosen = await make_plan(llm, crowded, QUESTION, [], max_tokens=32, timeout_s=2.0)
        await llm.aclose()
    assert [(t.specialist, t.question) for t in outcome.tasks] == [
        ("policy", QUESTION),
        ("support", QUESTION),
    ]
    assert outcome.usage.input_tokens == 0 and not outcome.used_default
    assert len(script.requests) == 1 and [t.specialist for t in chosen.tasks] == ["support"]
    assert TenantConfig.model_validate({k: v for k, v in ACME.items() if k != "planning"}).planning == "auto"


async def test_a_plan_is_a_few_names_and_every_specialist_gets_the_question() -> None:
    two = TenantConfig.model_validate(ACME)
    script = Script([json.dumps({"specialists": ["support", "policy", "support"]})])
    with serve(script) as url:
        llm = PrimaryLLM(OrchestrationSettings(primary_llm_base_url=url))
        outcome = await make_plan(llm, two, QUESTION, [], max_tokens=32, timeout_s=2.0)
        await llm.aclose()
    assert [(t.specialist, t.question) for t in outcome.tasks] == [
        ("support", QUESTION),
        ("policy", QUESTION),
    ]
    prompt = " ".join(m["content"] for m in script.requests[0]["messages"])
    assert len(prompt) < 600  # short and single-purpose, for the 135M default
