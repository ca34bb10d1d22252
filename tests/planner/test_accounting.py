"""Every token counted: each LLM call of a request, in the event and in the metrics, failed ones too.

The scripted primary LLM answers every call with 11 input and 7 output tokens, so the sum of
every call is 18 x the calls it received; the fake specialists report a fixed usage each.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from loraswarm.shared.events import RecommendationCompleted, RecommendationFailed, TokenUsage
from loraswarm.shared.settings import Settings
from tests.planner.conftest import ACME, write_tenant
from tests.planner.scripted_llm import Script, serve
from tests.planner.test_planner import TWO_PLAN, request
from tests.planner.world import configure, world

SPECIALIST = TokenUsage(input_tokens=40, output_tokens=10)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def llm_tokens(kind: str) -> float:
    return metric("loraswarm_llm_tokens_total", service="planner", tenant="acme", model="tgi", type=kind)


def step_tokens(step: str, adapter: str, direction: str) -> float:
    return metric(
        "loraswarm_request_tokens_total",
        tenant="acme",
        user="ana",
        adapter=adapter,
        step=step,
        direction=direction,
    )


STEPS = {
    "plan": "base",
    "compose": "base",
    "specialist:policy": "acme/company",
    "specialist:support": "acme/company+acme/user-ana",
}


def snapshot() -> dict[str, float]:
    values = {f"llm:{k}": llm_tokens(k) for k in ("input", "output")}
    for step, adapter in STEPS.items():
        for direction in ("input", "output"):
            values[f"{step}:{direction}"] = step_tokens(step, adapter, direction)
    return values


async def test_a_retried_plan_and_an_invalid_composition_are_counted_in_event_and_metrics(
    settings: Settings, tenants_dir: Path
) -> None:
    # plan: garbage, then a valid plan (a retry); compose: an answer that is not a composition.
    # The composer that asks the LLM for the whole composition: its answer can fail validation.
    settings.orchestration.composer = "legacy"
    script = Script(["no plan here", TWO_PLAN, "not a composition either"])
    before = snapshot()
    with serve(script) as url:
        async with world(configure(settings, tenants_dir, url), {}, usage=SPECIALIST) as w:
            req = request()
            await w.bus.publish(req)
            outcome = await w.wait_outcome(req.request_id)
    after = snapshot()
    assert isinstance(outcome, RecommendationCompleted)
    assert any("composed from the specialists' answers" in n for n in outcome.notes)
    assert len(script.requests) == 3  # two plan calls, one composition

    usage = outcome.usage_by_step
    assert usage["plan"] == TokenUsage(input_tokens=22, output_tokens=14)
    assert usage["compose"] == TokenUsage(input_tokens=11, output_tokens=7)
    assert usage["specialist:policy"] == SPECIALIST and usage["specialist:support"] == SPECIALIST
    # The primary LLM's metric: the sum of every call it answered.
    calls = len(script.requests)
    assert after["llm:input"] - before["llm:input"] == 11 * calls
    assert after["llm:output"] - before["llm:output"] == 7 * calls
    # The per-step metric matches the event, step by step.
    for step in STEPS:
        for direction in ("input", "output"):
            delta = after[f"{step}:{direction}"] - before[f"{step}:{direction}"]
            assert delta == getattr(usage[step], f"{direction}_tokens"), (step, direction)


async def test_a_failed_request_carries_the_usage_of_its_calls(settings: Settings, tenants_dir: Path) -> None:
    script = Script(["no plan here", "still no plan"])
    before = snapshot()
    with serve(script) as url:
        # The specialists stay silent: the deadline fails the request after two plan calls.
        async with world(configure(settings, tenants_dir, url), {"policy": lambda task: None}) as w:
            req = request(deadline_s=3)
            await w.bus.publish(req)
            outcome = await w.wait_outcome(req.request_id)
    after = snapshot()
    assert isinstance(outcome, RecommendationFailed)
    assert outcome.code == "deadline"
    assert outcome.usage_by_step["plan"] == TokenUsage(input_tokens=22, output_tokens=14)
    assert after["plan:input"] - before["plan:input"] == 22
    assert after["llm:output"] - before["llm:output"] == 14


async def test_no_llm_call_is_made_once_the_budget_is_spent(settings: Settings, tmp_path: Path) -> None:
    tenants = tmp_path / "budget-tenants"
    write_tenant(tenants, {**ACME, "limits": {**ACME["limits"], "token_budget": 100}})
    script = Script([TWO_PLAN, "a composition that must never be asked for"])
    with serve(script) as url:
        # plan 18 + two specialists x 50 = 118 > 100: the composition is not asked for.
        async with world(configure(settings, tenants, url), {}, usage=SPECIALIST) as w:
            req = request()
            await w.bus.publish(req)
            outcome = await w.wait_outcome(req.request_id)
    assert isinstance(outcome, RecommendationCompleted)
    assert len(script.requests) == 1
    assert any("token budget is spent" in n for n in outcome.notes), outcome.notes
    assert outcome.usage_by_step["compose"] == TokenUsage()
