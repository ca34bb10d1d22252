"""Fuzzed `recommendation.requested` events: each completes, fails with a reason, or goes to dlq,
and the planner keeps serving (a valid request after the fuzz still completes)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from loraswarm.shared.codec import Poison, decode
from loraswarm.shared.events import DeadLetter, RecommendationCompleted, RecommendationRequested
from tests.conftest import isolated_settings
from tests.planner.scripted_llm import Script, serve
from tests.planner.test_planner import GOOD_PLAN
from tests.planner.world import configure, world

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
)
field_values = {
    "tenant_id": st.sampled_from(["acme", "globex", "initech", "ACME", "", "a/b"]) | st.text(max_size=10),
    "user_id": st.none() | st.sampled_from(["ana", "ben", "mallory", ""]) | json_leaf,
    "question": st.text(max_size=60) | st.just("x" * 9000) | json_leaf,
    "deadline_s": st.floats(-5, 30, allow_nan=False) | json_leaf,
    "sources": st.lists(st.text(max_size=8), max_size=3) | json_leaf,
    "type": st.sampled_from(["recommendation.requested", "recommendation.completed", "nope"]),
    "event_id": st.uuids().map(str) | st.text(max_size=8),
}


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    base: dict[str, Any] = json.loads(
        RecommendationRequested(
            tenant_id="acme", user_id="ana", question="Refund?", deadline_s=8
        ).model_dump_json()
    )
    base["request_id"] = str(uuid.uuid4())
    base["event_id"] = str(uuid.uuid4())
    for name in draw(st.sets(st.sampled_from(sorted(field_values)), max_size=3)):
        base[name] = draw(field_values[name])
    if draw(st.booleans()):
        base[draw(st.text(min_size=1, max_size=6))] = draw(json_leaf)
    return base


@hypothesis_settings(max_examples=3, deadline=None)
@given(batch=st.lists(payloads(), min_size=12, max_size=12))
def test_fuzzed_requests_complete_fail_or_dead_letter(
    batch: list[dict[str, Any]], tmp_path_factory: Any
) -> None:
    asyncio.run(_run(batch, tmp_path_factory.mktemp("fuzz")))


async def _run(batch: list[dict[str, Any]], tmp_path: Path) -> None:
    from tests.planner.conftest import ACME, write_tenant

    tenants = tmp_path / "tenants"
    write_tenant(tenants, ACME)
    settings = configure(isolated_settings("memory", tmp_path), tenants, "", llm_timeout_s=2.0)
    letters: list[DeadLetter] = []
    expected_outcomes: set[str] = set()
    expected_letters = 0
    with serve(Script([], default=GOOD_PLAN)) as url:
        settings.orchestration.primary_llm_base_url = url
        async with world(settings, {}) as w:

            @w.bus.broker.subscriber(w.bus.topic("dlq"), group_id="dlq-watch")
            async def on_letter(letter: DeadLetter) -> None:
                letters.append(letter)

            await w.bus.broker.start()  # the late subscriber joins the in-process broker
            for payload in batch:
                value = json.dumps(payload).encode()
                key = payload["tenant_id"].encode() if isinstance(payload.get("tenant_id"), str) else b"?"
                checked = decode(value, key, expected_type="recommendation.requested", max_bytes=1_048_576)
                if isinstance(checked, Poison):
                    expected_letters += 1
                else:
                    expected_outcomes.add(str(checked.request_id))
                await w.bus.publish_raw("recommendation.requested", value, key=key)
            deadline = asyncio.get_running_loop().time() + 60
            while {str(o.request_id) for o in w.outcomes} < expected_outcomes or len(
                letters
            ) < expected_letters:
                assert asyncio.get_running_loop().time() < deadline, (
                    f"{len(w.outcomes)}/{len(expected_outcomes)} outcomes, {len(letters)}/{expected_letters} letters"
                )
                await asyncio.sleep(0.05)
            for outcome in w.outcomes:
                if not isinstance(outcome, RecommendationCompleted):
                    assert outcome.reason, "a failure without a reason"
            # still serving
            script_ok = RecommendationRequested(tenant_id="acme", user_id="ana", question="Still there?")
            w.outcomes.clear()
            await w.bus.publish(script_ok)
            outcome = await w.wait_outcome(script_ok.request_id)
            assert outcome is not None
