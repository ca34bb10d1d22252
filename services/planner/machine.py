"""The planner's handling of each event, as plain async functions over `PlannerState`.

Every transition follows one order: compute, publish what it causes (with derived event ids),
then save the new state. A crash before the save redelivers the input and redoes the step with
the same ids (downstream skips the copies); a redelivered input whose step was saved is ignored.
The outcome is saved before it is published and re-published until the state says done, so
exactly one `recommendation.completed` or `.failed` exists per request, whatever crashes when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from loraswarm.services.planner import accounting
from loraswarm.services.planner.compose import (
    ComposeOutcome,
    compose_legacy,
    from_specialists,
    numbered_sources,
)
from loraswarm.services.planner.extract import compose_extractive
from loraswarm.services.planner.guardrails import OutputGuard, input_problem
from loraswarm.services.planner.llm import PrimaryLLM
from loraswarm.services.planner.plan import make_plan
from loraswarm.services.planner.state import PlannerState, StateStore, TaskState
from loraswarm.shared.envelope import Envelope, utc_now
from loraswarm.shared.events import (
    Contribution,
    Passage,
    RecommendationCompleted,
    RecommendationFailed,
    RecommendationRequested,
    RetrievalCompleted,
    RetrievalRequested,
    SpecialistResult,
    SpecialistTask,
    TokenUsage,
)
from loraswarm.shared.settings import OrchestrationSettings
from loraswarm.shared.tenants import TenantConfig, TenantConfigError, TenantRegistry, defaults_note

log = logging.getLogger("loraswarm.planner")

Publish = Callable[[Envelope], Awaitable[None]]
PublishMany = Callable[[Sequence[Envelope]], Awaitable[None]]
FailCode = str


class Planner:
    def __init__(
        self,
        settings: OrchestrationSettings,
        publish: Publish,
        store: StateStore,
        llm: PrimaryLLM,
        tenants: TenantRegistry,
        guard: OutputGuard,
        *,
        publish_many: PublishMany | None = None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.publish = publish
        # Several events with one wait for their acknowledgements (the fan-out's tasks).
        self.publish_many = publish_many or self._one_by_one
        self.store = store
        self.llm = llm
        self.tenants = tenants
        self.guard = guard
        self.now = now
        # The deadline loop and the handlers run in one event loop: one request at a time.
        self._locks: defaultdict[uuid.UUID, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def _one_by_one(self, events: Sequence[Envelope]) -> None:
        for event in events:
            await self.publish(event)

    def _tenant(self, tenant_id: str) -> TenantConfig | None:
        try:
            return self.tenants.get_or_default(tenant_id)
        except TenantConfigError as exc:
            log.error("%s", exc)
            return None

    def _llm_step(
        self, state: PlannerState, tenant: TenantConfig | None, step: str
    ) -> contextlib.AbstractContextManager[accounting.StepLedger]:
        """Account this step's LLM calls; refuse them once the request's token budget is spent."""
        budget_left = None if tenant is None else tenant.limits.token_budget - state.tokens_used()
        return accounting.step(state.tenant_id, state.request.user_id, step, budget_left=budget_left)

    def _left_s(self, state: PlannerState) -> float:
        return (state.deadline_at - self.now()).total_seconds()

    # ------------------------------------------------------------------ events

    async def on_requested(self, request: RecommendationRequested) -> None:
        async with self._locks[request.request_id]:
            if await self.store.get(request.request_id, request.tenant_id) is not None:
                return  # a redelivery, or the same request_id twice: one answer only
            tenant = self._tenant(request.tenant_id)
            deadline_s = min(request.deadline_s, tenant.limits.deadline_s if tenant else request.deadline_s)
            state = PlannerState(
                request=request, deadline_at=request.occurred_at + timedelta(seconds=deadline_s)
            )
            if tenant is not None and self.tenants.runs_on_defaults(request.tenant_id):
                state.notes.append(defaults_note(request.tenant_id))
            problem = input_problem(request, tenant)
            if problem is not None:
                await self._finish(
                    state, request.caused(RecommendationFailed, reason=problem, code="invalid_request")
                )
                return
            if self._left_s(state) <= 0:
                await self._finish(
                    state,
                    request.caused(
                        RecommendationFailed, reason="the request arrived after its deadline", code="deadline"
                    ),
                )
                return
            await self.publish(
                request.caused(
                    RetrievalRequested,
                    query=request.question,
                    k=self.settings.retrieval_k,
                    sources=request.sources,
                )
            )
            await self.store.put(state)

    async def on_retrieved(self, event: RetrievalCompleted) -> None:
        async with self._locks[event.request_id]:
            state = await self.store.get(event.request_id, event.tenant_id)
            if state is None or state.phase != "retrieving":
                return
            tenant = self._tenant(state.tenant_id)
            if tenant is None:
                await self._fail(state, "the tenant's configuration disappeared", "invalid_request")
                return
            state.passages = list(event.passages)
            state.timings_ms["retrieval"] = (self.now() - state.request.occurred_at).total_seconds() * 1000
            with self._llm_step(state, tenant, "plan") as ledger:
                outcome = await make_plan(
                    self.llm,
                    tenant,
                    state.request.question,
                    state.passages,
                    max_tokens=self.settings.plan_max_tokens,
                    timeout_s=max(0.5, min(self.settings.llm_timeout_s, self._left_s(state))),
                )
            state.notes += outcome.notes
            state.add_usage("plan", ledger.usage)  # every attempt, the rejected ones too
            state.timings_ms["llm_plan"] = outcome.llm_ms
            state.timings_ms["plan"] = (
                self.now() - state.request.occurred_at
            ).total_seconds() * 1000 - state.timings_ms["retrieval"]
            tasks = []
            planned_names = [planned.specialist for planned in outcome.tasks]
            for index, planned in enumerate(outcome.tasks):
                spec = tenant.specialist(planned.specialist)
                assert spec is not None  # check_plan and the fallback only name known specialists
                task = state.request.caused(
                    SpecialistTask,
                    index=index,
                    specialist=spec.name,
                    question=planned.question,
                    adapter_ids=tenant.adapters_for(spec, state.request.user_id),
                    context=_in_sources(state.passages, spec.sources),
                    peers=[name for name in planned_names if name != spec.name],
                    deadline_at=state.deadline_at,
                )
                tasks.append(task)
                state.tasks[str(task.event_id)] = TaskState(
                    task_id=task.event_id,
                    specialist=spec.name,
                    question=task.question,
                    adapter_ids=task.adapter_ids,
                )
            await self.publish_many(tasks)
            state.phase = "waiting"
            await self.store.put(state)

    async def on_result(self, result: SpecialistResult) -> None:
        async with self._locks[result.request_id]:
            state = await self.store.get(result.request_id, result.tenant_id)
            if state is None or state.phase != "waiting":
                return
            tenant = self._tenant(state.tenant_id)
            task = state.tasks.get(str(result.task_id))
            if task is None:
                state.early_results[str(result.task_id)] = (
                    result  # a hand-off's result, ahead of the hand-off
                )
                await self.store.put(state)
                return
            if task.result is not None:
                return
            task.result = result
            state.add_usage(f"specialist:{result.specialist}", result.usage)
            accounting.specialist_result(state.tenant_id, state.request.user_id, result)
            if await self._withheld(state, result.answer, f"specialist:{result.specialist}"):
                return
            for handoff in result.handoffs:
                state.tasks.setdefault(
                    str(handoff.task_id),
                    TaskState(
                        task_id=handoff.task_id,
                        specialist=handoff.specialist,
                        question=handoff.question,
                        adapter_ids=list(handoff.adapter_ids),
                        hop=handoff.hop,
                        result=state.early_results.pop(str(handoff.task_id), None),
                    ),
                )
            over_budget = tenant is not None and state.tokens_used() > tenant.limits.token_budget
            if over_budget and state.pending():
                state.notes.append(f"token budget {tenant.limits.token_budget if tenant else 0} reached")
            if not state.pending() or over_budget:
                await self._complete(state, partial=bool(state.pending()))
            else:
                await self.store.put(state)

    # ------------------------------------------------------------------ deadlines

    async def check_deadlines(self, owned: Callable[[str], bool]) -> None:
        """Finish every owned request past its deadline, and re-publish unfinished outcomes."""
        for snapshot in self.store.open_states():
            if not owned(snapshot.tenant_id):
                continue
            if snapshot.outcome is None and self._left_s(snapshot) > 0:
                continue
            async with self._locks[snapshot.request_id]:
                state = await self.store.get(snapshot.request_id, snapshot.tenant_id)
                if state is None or state.phase == "done":
                    continue
                if state.outcome is not None:
                    await self._finish(state, state.outcome)
                elif self._left_s(state) <= 0:
                    await self._at_deadline(state)

    async def _at_deadline(self, state: PlannerState) -> None:
        answered = [t for t in state.tasks.values() if t.result is not None and not t.result.error]
        deadline_s = (state.deadline_at - state.request.occurred_at).total_seconds()
        if not answered:
            waiting_for = "retrieval" if state.phase == "retrieving" else "any specialist"
            await self._fail(
                state, f"the deadline ({deadline_s:.0f} s) passed before {waiting_for} answered", "deadline"
            )
            return
        missing = sorted(t.specialist for t in state.pending())
        state.notes.append(f"deadline ({deadline_s:.0f} s) reached without: {', '.join(missing)}")
        await self._complete(state, partial=True, use_llm=False)

    # ------------------------------------------------------------------ outcomes

    async def _complete(self, state: PlannerState, *, partial: bool, use_llm: bool = True) -> None:
        started = self.now()
        errors = [
            f"{t.specialist}: {t.result.error}" for t in state.tasks.values() if t.result and t.result.error
        ]
        if not any(t.result is not None and not t.result.error for t in state.tasks.values()):
            # Nothing grounded to compose from: say why instead of letting the LLM improvise.
            await self._fail(
                state, "no specialist produced an answer (" + "; ".join(errors)[:600] + ")", "llm_error"
            )
            return
        timeout_s = max(0.5, min(self.settings.llm_timeout_s, self._left_s(state) - 0.5))
        with_llm = use_llm and self._left_s(state) > 1.0
        # Every LLM call inside the ledger is counted, also one whose answer is thrown away (an
        # echo retried, a phrasing that did not validate): its tokens were spent.
        with self._llm_step(state, self._tenant(state.tenant_id), "compose") as ledger:
            if self.settings.composer == "legacy":
                if with_llm:
                    composed = await compose_legacy(
                        self.llm, state, max_tokens=self.settings.compose_max_tokens, timeout_s=timeout_s
                    )
                else:
                    composed = ComposeOutcome(
                        from_specialists(state, numbered_sources(state)), "", TokenUsage()
                    )
            else:
                # At the deadline there is no time for another LLM call: the extracted sentences stand.
                composed = await compose_extractive(
                    self.llm if with_llm else None,
                    state,
                    max_tokens=self.settings.compose_max_tokens,
                    timeout_s=timeout_s,
                    phrase_it=self.settings.phrases,
                )
        state.add_usage("compose", ledger.usage)
        state.notes += composed.notes
        state.timings_ms["llm_compose"] = composed.llm_ms
        if not composed.recommendations:
            await self._fail(state, "no specialist produced an answer", "llm_error")
            return
        text = " ".join([composed.summary, *(r.text + " " + r.rationale for r in composed.recommendations)])
        if await self._withheld(state, text, "compose"):
            return
        state.timings_ms["compose"] = (self.now() - started).total_seconds() * 1000
        state.timings_ms["total"] = (self.now() - state.request.occurred_at).total_seconds() * 1000
        contributions = [
            Contribution(
                specialist=t.specialist,
                # What really ran: a specialist falls back when an adapter is not published yet.
                adapter_ids=t.result.adapter_ids,
                usage=t.result.usage,
                duration_ms=t.result.duration_ms,
            )
            for t in state.tasks.values()
            if t.result is not None
        ]
        completed = state.request.caused(
            RecommendationCompleted,
            recommendations=composed.recommendations,
            summary=composed.summary,
            contributions=contributions,
            usage_by_step=state.usage_by_step,
            timings_ms=state.timings_ms,
            partial=partial,
            notes=state.notes,
            passages=state.passages,
        )
        await self._finish(state, completed)

    async def _withheld(self, state: PlannerState, text: str, stage: str) -> bool:
        """End the request as `guardrail` if `text` shows the asker what is not theirs."""
        tenant = self._tenant(state.tenant_id)
        leak = self.guard.check(text, state.tenant_id, state.request.user_id, tenant, stage=stage)
        if leak is None:
            return False
        log.error("withheld an answer for %s (%s): %s", state.tenant_id, stage, leak.reason)
        where = "the answer" if stage == "compose" else f"the {stage.split(':', 1)[-1]} specialist's answer"
        await self._fail(state, f"{where} was withheld: {leak.reason}", "guardrail")
        return True

    async def _fail(self, state: PlannerState, reason: str, code: str) -> None:
        failed = state.request.caused(
            RecommendationFailed,
            reason=reason,
            code=code,
            usage_by_step=state.usage_by_step,
        )
        await self._finish(state, failed)

    async def _finish(
        self, state: PlannerState, outcome: RecommendationCompleted | RecommendationFailed
    ) -> None:
        state.outcome = outcome
        await self.store.put(state)  # saved first: a crash now re-publishes this same outcome
        await self.publish(outcome)
        state.phase = "done"
        await self.store.put(state)  # done: tombstoned, no longer read at a restart


def _in_sources(passages: list[Passage], sources: list[str]) -> list[Passage]:
    if not sources:
        return passages
    return [
        p
        for p in passages
        if any(p.citation.source.startswith(s) or p.citation.doc_id.startswith(s) for s in sources)
    ]
