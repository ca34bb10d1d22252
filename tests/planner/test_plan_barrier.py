"""The plan is made while the read barrier runs, and kept only if the barrier brings nothing newer.

`on_retrieved` starts its plan from the state the table holds and waits for the barrier before
it publishes or saves anything. Here a stand-in store's barrier brings another instance's write
(a new state object), as the Kafka store's tail would: the planner must act on that state.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

from loraswarm.services.planner.guardrails import OutputGuard
from loraswarm.services.planner.llm import PrimaryLLM
from loraswarm.services.planner.machine import Planner
from loraswarm.services.planner.state import MemoryStateStore, PlannerState
from loraswarm.shared.envelope import Envelope
from loraswarm.shared.events import RecommendationRequested, RetrievalCompleted, SpecialistTask
from loraswarm.shared.secrets import SecretRegistry
from loraswarm.shared.settings import OrchestrationSettings
from loraswarm.shared.tenants import TenantRegistry
from tests.planner.scripted_llm import Script, serve

POLICY_PLAN = json.dumps({"specialists": ["policy"]})
SUPPORT_PLAN = json.dumps({"specialists": ["support"]})


class BarrierBringsAWrite(MemoryStateStore):
    """`get` (the barrier) first puts `written` in the table, as another instance's record would."""

    def __init__(self) -> None:
        super().__init__()
        self.written: PlannerState | None = None

    async def get(self, request_id: uuid.UUID, tenant_id: str | None = None) -> PlannerState | None:
        if self.written is not None:
            await super().put(self.written)
            self.written = None
        return await super().get(request_id, tenant_id)


def planner(
    tmp_path: Path, tenants_dir: Path, url: str, store: MemoryStateStore
) -> tuple[Planner, list[Envelope]]:
    settings = OrchestrationSettings(tenants_dir=tenants_dir, primary_llm_base_url=url, llm_timeout_s=2.0)
    published: list[Envelope] = []

    async def publish(event: Envelope) -> None:
        published.append(event)

    data = tmp_path / "data"
    tenants = TenantRegistry(tenants_dir, defaults_from=data)
    return Planner(
        settings, publish, store, PrimaryLLM(settings), tenants, OutputGuard(data, SecretRegistry(data))
    ), published


def retrieving(request: RecommendationRequested, **fields: object) -> PlannerState:
    return PlannerState(request=request, deadline_at=request.occurred_at + timedelta(seconds=20), **fields)  # type: ignore[arg-type]


async def test_a_plan_from_a_state_the_barrier_replaced_is_made_again_from_the_new_one(
    tmp_path: Path, tenants_dir: Path
) -> None:
    request = RecommendationRequested(tenant_id="acme", question="Can I refund after 20 days?")
    store = BarrierBringsAWrite()
    await store.put(retrieving(request))
    store.written = retrieving(request, notes=["written by the instance that owned acme before"])
    script = Script([POLICY_PLAN, SUPPORT_PLAN])
    with serve(script) as url:
        plan, published = planner(tmp_path, tenants_dir, url, store)
        await plan.on_retrieved(request.caused(RetrievalCompleted, passages=[]))
    assert len(script.requests) == 2, "the first plan was made again"
    [task] = published
    assert isinstance(task, SpecialistTask) and task.specialist == "support"  # the second plan's
    saved = await store.get(request.request_id)
    assert saved is not None and saved.phase == "waiting"
    assert saved.notes[0] == "written by the instance that owned acme before"
    assert saved.usage_by_step["plan"].input_tokens == 2 * 11, "both plans' tokens were spent"


async def test_a_step_another_instance_took_meanwhile_is_not_taken_again(
    tmp_path: Path, tenants_dir: Path
) -> None:
    request = RecommendationRequested(tenant_id="acme", question="Can I refund after 20 days?")
    store = BarrierBringsAWrite()
    await store.put(retrieving(request))
    store.written = retrieving(request, phase="waiting")
    with serve(Script([POLICY_PLAN])) as url:
        plan, published = planner(tmp_path, tenants_dir, url, store)
        await plan.on_retrieved(request.caused(RetrievalCompleted, passages=[]))
    assert published == []
    saved = await store.get(request.request_id)
    assert saved is not None and saved.tasks == {}


async def test_an_unchanged_state_keeps_the_one_plan(tmp_path: Path, tenants_dir: Path) -> None:
    request = RecommendationRequested(tenant_id="acme", question="Can I refund after 20 days?")
    store = BarrierBringsAWrite()
    await store.put(retrieving(request))
    script = Script([POLICY_PLAN, SUPPORT_PLAN])
    with serve(script) as url:
        plan, published = planner(tmp_path, tenants_dir, url, store)
        await plan.on_retrieved(request.caused(RetrievalCompleted, passages=[]))
    assert len(script.requests) == 1
    assert [t.specialist for t in published if isinstance(t, SpecialistTask)] == ["policy"]
