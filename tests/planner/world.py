"""A planner under test, with the test playing retriever and specialists on the same broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from loraswarm.services.planner.app import PlannerService, running
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import (
    Citation,
    Passage,
    RecommendationCompleted,
    RecommendationFailed,
    RetrievalCompleted,
    RetrievalRequested,
    SpecialistResult,
    SpecialistTask,
    TokenUsage,
)
from loraswarm.shared.settings import Settings

Behaviour = Callable[[SpecialistTask], str | None]  # the answer, or None to stay silent


@dataclass
class World:
    bus: EventBus
    planner: PlannerService
    outcomes: list[RecommendationCompleted | RecommendationFailed] = field(default_factory=list)
    tasks: list[SpecialistTask] = field(default_factory=list)

    async def wait_outcome(
        self, request_id: object, timeout_s: float = 30.0
    ) -> RecommendationCompleted | RecommendationFailed:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            for outcome in self.outcomes:
                if outcome.request_id == request_id:
                    return outcome
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("no outcome in time")
            await asyncio.sleep(0.02)


PASSAGE = Passage(
    text="Refunds are accepted within 30 days with a receipt.",
    score=0.9,
    citation=Citation(doc_id="refund-policy", source="handbook", title="Refund policy", position=0),
)


def configure(settings: Settings, tenants_dir: Path, llm_url: str, *, llm_timeout_s: float = 2.0) -> Settings:
    settings.orchestration.tenants_dir = tenants_dir
    settings.orchestration.primary_llm_base_url = llm_url
    settings.orchestration.llm_timeout_s = llm_timeout_s
    settings.orchestration.compose_phrase = "on"  # the scripted LLM stands for a configured primary LLM
    settings.orchestration.deadline_check_s = 0.1
    return settings


def _hello(task: SpecialistTask) -> str | None:
    return f"{task.specialist} says hello"


@contextlib.asynccontextmanager
async def world(
    settings: Settings, behaviours: dict[str, Behaviour], *, usage: TokenUsage | None = None
) -> AsyncIterator[World]:
    bus = EventBus(settings, service="test-world")
    async with running(settings) as planner:
        w = World(bus, planner)

        @bus.consumer(RetrievalRequested, group="fake-retriever")
        async def retrieve(event: RetrievalRequested) -> None:
            await bus.publish(event.caused(RetrievalCompleted, passages=[PASSAGE]))

        @bus.consumer(SpecialistTask, group="fake-specialists")
        async def answer(task: SpecialistTask) -> None:
            w.tasks.append(task)
            behaviour = behaviours.get(task.specialist, _hello)
            text = behaviour(task)
            if text is not None:
                await bus.publish(
                    task.caused(
                        SpecialistResult,
                        specialist=task.specialist,
                        task_id=task.event_id,
                        answer=text,
                        citations=[PASSAGE.citation],
                        adapter_ids=task.adapter_ids,
                        usage=usage or TokenUsage(),
                    )
                )

        @bus.consumer(RecommendationCompleted, group="client")
        async def completed(event: RecommendationCompleted) -> None:
            w.outcomes.append(event)

        @bus.consumer(RecommendationFailed, group="client-failed")
        async def failed(event: RecommendationFailed) -> None:
            w.outcomes.append(event)

        async with bus:
            yield w
