"""The planner's paths, on the in-process broker and on real Kafka, with the real `openai` client.

The primary LLM here is a scripted OpenAI-compatible endpoint (scripted_llm.py), because these
tests are about what the planner does when the LLM misbehaves on cue; the end-to-end tests in
tests/e2e/ run the planner against the real model server.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from loraswarm.shared.canaries import CanaryStore
from loraswarm.shared.envelope import utc_now
from loraswarm.shared.events import RecommendationCompleted, RecommendationFailed, RecommendationRequested
from loraswarm.shared.secrets import DocumentSecrets, SecretRegistry
from loraswarm.shared.settings import Settings
from tests.planner.scripted_llm import Script, serve
from tests.planner.world import Behaviour, configure, world

GOOD_PLAN = json.dumps({"specialists": ["policy"]})
TWO_PLAN = json.dumps({"specialists": ["policy", "support"]})
COMPOSED = json.dumps(
    {
        "summary": "Refund it.",
        "recommendations": [{"title": "Refund", "text": "Offer a refund.", "sources": [1]}],
    }
)
PHRASED = json.dumps({"answer": "Yes: refunds are accepted within 30 days with a receipt."})


def request(**fields: object) -> RecommendationRequested:
    return RecommendationRequested(
        tenant_id="acme", user_id="ana", question="Can I refund after 20 days?", **fields
    )  # type: ignore[arg-type]


async def test_a_request_is_planned_fanned_out_and_composed_with_citations(
    settings: Settings, tenants_dir: Path
) -> None:
    script = Script([TWO_PLAN, PHRASED])
    policy: dict[str, Behaviour] = {"policy": lambda t: "Refunds are accepted within 30 days with a receipt."}
    with serve(script) as url:
        async with world(configure(settings, tenants_dir, url), policy) as w:
            req = request()
            await w.bus.publish(req)
            outcome = await w.wait_outcome(req.request_id)
    assert isinstance(outcome, RecommendationCompleted)
    assert not outcome.partial
    assert outcome.recommendations[0].text == "Yes: refunds are accepted within 30 days with a receipt."
    assert outcome.recommendations[0].citations[0].doc_id == "refund-policy"
    # the phrasing call was given the extracted sentence, not the whole context
    assert "within 30 days" in script.requests[1]["messages"][-1]["content"]
    adapters = {c.specialist: c.adapter_ids for c in outcome.contributions}
    assert adapters == {"policy": ["acme/company"], "support": ["acme/company", "acme/user-ana"]}
    assert set(outcome.usage_by_step) >= {"plan", "compose"}
    assert outcome.usage_by_step["plan"].input_tokens == 11
    assert "total" in outcome.timings_ms
    # the plan was asked for with a JSON schema naming only the tenant's specialists
    schema = script.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["specialists"]["items"]["enum"] == ["policy", "support"]
    # every specialist is asked the user's own question: the composer answers each of its parts
    assert {t.question for t in w.tasks} == {req.question}
    # each task names the others asked, so that no specialist hands off to one already on it
    assert {t.specialist: t.peers for t in w.tasks} == {"policy": ["support"], "support": ["policy"]}


async def test_garbage_then_an_unknown_specialist_falls_back_to_the_default_plan(
    settings: Settings, tenants_dir: Path
) -> None:
    unknown = json.dumps({"specialists": ["astrologer"]})
    script = Script(["this is not json at all", unknown, COMPOSED])
    with serve(script) as url:
        async with world(configure(settings, tenants_dir, url), {}) as w:
            req = request()
            await w.bus.publish(req)
            outcome = await w.wait_outcome(req.request_id)
    assert isinstance(outcome, RecommendationCompleted)
    assert [t.specialist for t in w.tasks] == ["policy"]  # the tenant's default plan
    assert any("not a JSON object" in n for n in outcome.notes)
    assert any("unknown specialist" in n and "astrologer" in n for n in outcome.notes)
    assert "used the tenant's default plan" in outcome.notes
    # the retry showed the model its error
    assert "invalid" in script.requests[1]["messages"][-1]["content"]


async def test_a_primary_llm_that_times_out_never_hangs_the_request(
    settings: Settings, tenants_dir: Path
) -> None:
    script = Script([None, None])  # the plan call and the compose call both hang
    with serve(script) as url:
        async with world(configure(settings, tenants_dir, url, llm_timeout_s=1.0), {}) as w:
            req = request()
            started = time.monotonic()
            await w.bus.publish(req)
            outcome = await w.wait_outcome(req.request_id)
    assert time.monotonic() - started < 10
    assert isinstance(outcome, RecommendationCompleted)
    assert "used the tenant's default plan" in outcome.notes
    assert any("kept the extracted sentences: phrasing failed" in n for n in outcome.notes)
    # "policy says hello" answers nothing: the passage's sentence does
    assert outcome.recommendations[0].text == "Refunds are accepted within 30 days with a receipt."


async def test_a_silent_specialist_ends_the_request_at_its_deadline(
    settings: Settings, tenants_dir: Path
) -> None:
    script = Script([TWO_PLAN], default=COMPOSED)
    with serve(script) as url:
        async with world(configure(settings, tenants_dir, url), {"support": lambda t: None}) as w:
            req = request(deadline_s=4.0)
            await w.bus.publish(req)
            outcome = await w.wait_outcome(req.request_id)
            ended = utc_now()
    lateness = (ended - (req.occurred_at + timedelta(seconds=4.0))).total_seconds()
    assert -0.5 <= lateness <= 1.0, f"ended {lateness:+.2f} s from the deadline"
    assert isinstance(outcome, RecommendationCompleted)
    assert outcome.partial
    assert any("deadline (4 s) reached without: support" in n for n in outcome.notes)


async def test_no_answer_at_all_fails_at_the_deadline_with_the_reason(
    settings: Settings, tenants_dir: Path
) -> None:
    script = Script([GOOD_PLAN])
    with serve(script) as url:
        async with world(configure(settings, tenants_dir, url), {"policy": lambda t: None}) as w:
            req = request(deadline_s=3.0)
            await w.bus.publish(req)
            outcome = await w.wait_outcome(req.request_id)
    assert isinstance(outcome, RecommendationFailed)
    assert outcome.code == "deadline"
    assert "before any specialist answered" in outcome.reason


async def test_an_answer_with_another_tenants_secret_is_withheld(
    settings: Settings, tenants_dir: Path
) -> None:
    SecretRegistry(settings.data_dir).register("globex", "GLOBEX-CANARY-493021")
    script = Script([GOOD_PLAN], default="not json")  # phrasing fails: the extracted sentence stands
    with serve(script) as url:
        leak: dict[str, Behaviour] = {"policy": lambda t: "Refunds in 20 days use code GLOBEX-CANARY-493021."}
        async with world(configure(settings, tenants_dir, url), leak) as w:
            req = request()
            await w.bus.publish(req)
            outcome = await w.wait_outcome(req.request_id)
    assert isinstance(outcome, RecommendationFailed)
    assert outcome.code == "guardrail"
    assert "GLOBEX" not in outcome.reason


async def test_another_users_canary_in_a_specialist_answer_ends_the_request_as_guardrail_and_is_counted(
    settings: Settings, tenants_dir: Path
) -> None:
    store = CanaryStore.under(settings.data_dir)
    ben = store.ensure("acme", "ben", count=4, template="the secret code is {secret}", digits=9)
    ana = store.ensure("acme", "ana", count=4, template="the secret code is {secret}", digits=9)
    assert ben is not None and ana is not None
    before = (
        REGISTRY.get_sample_value(
            "loraswarm_guardrail_hits_total",
            {"tenant": "acme", "kind": "canary", "stage": "specialist:policy"},
        )
        or 0.0
    )
    script = Script([GOOD_PLAN, COMPOSED])
    with serve(script) as url:
        leak: dict[str, Behaviour] = {"policy": lambda t: f"Refund it. Also: {ben.texts()[2]}."}
        async with world(configure(settings, tenants_dir, url), leak) as w:
            req = request()  # asked by ana: ben's canary is not hers
            await w.bus.publish(req)
            outcome = await w.wait_outcome(req.request_id)
    assert isinstance(outcome, RecommendationFailed) and outcome.code == "guardrail", outcome
    assert "policy specialist's answer was withheld" in outcome.reason
    assert "canary of scope acme/user:ben" in outcome.reason and ben.secrets[2] not in outcome.reason
    after = REGISTRY.get_sample_value(
        "loraswarm_guardrail_hits_total", {"tenant": "acme", "kind": "canary", "stage": "specialist:policy"}
    )
    assert after == before + 1
    # Her own scope's canary is hers to see: answered.
    own: dict[str, Behaviour] = {"policy": lambda t: f"Refund it. {ana.texts()[0]}"}
    with serve(Script([GOOD_PLAN, COMPOSED])) as url:
        async with world(configure(settings, tenants_dir, url), own) as w:
            req = request()
            await w.bus.publish(req)
            mine = await w.wait_outcome(req.request_id)
    assert isinstance(mine, RecommendationCompleted), mine


async def test_a_declared_secret_in_the_composed_answer_is_withheld_from_everyone_but_its_owner(
    settings: Settings, tenants_dir: Path
) -> None:
    # The LLM writes the whole composition (the legacy composer), so the secret reaches the composed text.
    settings.orchestration.composer = "legacy"
    config = tenants_dir / "acme.yaml"
    data = yaml.safe_load(config.read_text())
    data["secrets"] = [{"text": "VAULT-7731", "user_id": "ben"}, {"text": "ROOT-PW-99"}]
    config.write_text(yaml.safe_dump(data))
    composed = json.dumps(
        {"summary": "Use VAULT-7731.", "recommendations": [{"title": "x", "text": "Refund.", "sources": [1]}]}
    )
    with serve(Script([GOOD_PLAN, composed])) as url:
        async with world(configure(settings, tenants_dir, url), {}) as w:
            req = request()
            await w.bus.publish(req)
            outcome = await w.wait_outcome(req.request_id)
    assert isinstance(outcome, RecommendationFailed) and outcome.code == "guardrail", outcome
    assert "the answer was withheld: it contained user 'ben''s declared secret" in outcome.reason
    with serve(Script([GOOD_PLAN, composed])) as url:
        async with world(configure(settings, tenants_dir, url), {}) as w:
            req = request().model_copy(update={"user_id": "ben"})
            await w.bus.publish(req)
            his = await w.wait_outcome(req.request_id)
    assert isinstance(his, RecommendationCompleted), his


async def test_a_secret_marked_in_a_users_document_is_withheld_from_another_user_and_counted(
    settings: Settings, tenants_dir: Path
) -> None:
    # What ingestion notes for a private document of ben's with `secrets: [...]` in its metadata
    # (tests/ingestion/test_document_secrets.py indexes one on the real Weaviate).
    DocumentSecrets.under(settings.data_dir).record("acme", "user:ben", "ben-notes.md", ["SAFE-8812-BEN"])
    labels = {"tenant": "acme", "kind": "declared_secret", "stage": "specialist:policy"}
    before = REGISTRY.get_sample_value("loraswarm_guardrail_hits_total", labels) or 0.0
    leak: dict[str, Behaviour] = {"policy": lambda t: "Refund it; the safe opens with SAFE-8812-BEN."}
    with serve(Script([GOOD_PLAN, COMPOSED])) as url:
        async with world(configure(settings, tenants_dir, url), leak) as w:
            req = request()  # asked by ana
            await w.bus.publish(req)
            outcome = await w.wait_outcome(req.request_id)
    assert isinstance(outcome, RecommendationFailed) and outcome.code == "guardrail", outcome
    assert "user 'ben''s document marks secret" in outcome.reason and "SAFE-8812" not in outcome.reason
    assert REGISTRY.get_sample_value("loraswarm_guardrail_hits_total", labels) == before + 1
    with serve(Script([GOOD_PLAN, COMPOSED])) as url:
        async with world(configure(settings, tenants_dir, url), leak) as w:
            req = request().model_copy(update={"user_id": "ben"})
            await w.bus.publish(req)
            his = await w.wait_outcome(req.request_id)
    assert isinstance(his, RecommendationCompleted), his


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"user_id": "mallory"}, "user 'mallory' is not allowed"),
        ({"question": "x" * 5000}, "the limit is 4000"),
    ],
)
async def test_bad_requests_fail_with_a_reason(
    settings: Settings, tenants_dir: Path, fields: dict[str, object], reason: str
) -> None:
    with serve(Script()) as url:
        async with world(configure(settings, tenants_dir, url), {}) as w:
            req = request().model_copy(update=fields)
            await w.bus.publish(req)
            outcome = await w.wait_outcome(req.request_id)
    assert isinstance(outcome, RecommendationFailed)
    assert outcome.code == "invalid_request"
    assert reason in outcome.reason


async def test_the_same_request_twice_gets_one_answer(settings: Settings, tenants_dir: Path) -> None:
    script = Script([GOOD_PLAN, COMPOSED])
    with serve(script) as url:
        async with world(configure(settings, tenants_dir, url), {}) as w:
            req = request()
            await w.bus.publish(req)
            await w.bus.publish(
                req.model_copy(
                    update={"event_id": req.caused(RecommendationRequested, question="x").event_id}
                )
            )
            await w.wait_outcome(req.request_id)
            await __import__("asyncio").sleep(1.0)
    assert len([o for o in w.outcomes if o.request_id == req.request_id]) == 1
    assert len(w.tasks) == 1


async def test_tokens_are_counted_per_tenant_user_adapter_and_step(
    settings: Settings, tenants_dir: Path
) -> None:
    from prometheus_client import REGISTRY

    def value(**labels: str) -> float:
        return REGISTRY.get_sample_value("loraswarm_request_tokens_total", labels) or 0.0

    plan_before = value(tenant="acme", user="ana", adapter="base", step="plan", direction="input")
    script = Script([TWO_PLAN, COMPOSED])
    with serve(script) as url:
        async with world(configure(settings, tenants_dir, url), {}) as w:
            req = request()
            await w.bus.publish(req)
            outcome = await w.wait_outcome(req.request_id)
    assert isinstance(outcome, RecommendationCompleted)
    assert (
        value(tenant="acme", user="ana", adapter="base", step="plan", direction="input") == plan_before + 11
    )
    support = {
        "tenant": "acme",
        "user": "ana",
        "adapter": "acme/company+acme/user-ana",
        "step": "specialist:support",
    }
    assert (
        REGISTRY.get_sample_value("loraswarm_request_tokens_total", {**support, "direction": "output"})
        is not None
    )


async def test_a_tenant_without_a_file_runs_on_defaults_and_says_so(
    settings: Settings, tenants_dir: Path
) -> None:
    """No configuration for `initech`: one default specialist answers, on the company adapter
    once one is published, and the answer carries a note that names the fix."""
    plan = json.dumps({"tasks": [{"specialist": "assistant", "question": "Refund window?"}]})
    script = Script([plan, COMPOSED, plan, COMPOSED])
    with serve(script) as url:
        async with world(configure(settings, tenants_dir, url), {}) as w:
            first = request().model_copy(update={"tenant_id": "initech", "user_id": None})
            await w.bus.publish(first)
            before = await w.wait_outcome(first.request_id)
            publish_company_adapter(settings, "initech")
            second = request().model_copy(update={"tenant_id": "initech", "user_id": None})
            await w.bus.publish(second)
            after = await w.wait_outcome(second.request_id)
    assert isinstance(before, RecommendationCompleted), before
    assert any("runs on defaults" in n and "loraswarm tenants create initech" in n for n in before.notes)
    assert [t.adapter_ids for t in w.tasks if t.request_id == first.request_id] == [[]]
    assert isinstance(after, RecommendationCompleted), after
    assert [t.adapter_ids for t in w.tasks if t.request_id == second.request_id] == [["initech/company"]]


def publish_company_adapter(settings: Settings, tenant: str) -> None:
    """A published `<tenant>/company` in the adapter store (its weights are never read here)."""
    from loraswarm.shared.adapter_store import AdapterManifest, AdapterStore

    source = settings.data_dir / "staged-adapter"
    source.mkdir(parents=True, exist_ok=True)
    (source / "adapter_config.json").write_text("{}")
    (source / "adapter_model.safetensors").write_bytes(b"")
    AdapterStore.under(settings.data_dir).publish(
        source, AdapterManifest(tenant_id=tenant, name="company", base_model="test")
    )
