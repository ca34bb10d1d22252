"""Planner service — consumes `recommendation.requested`, `retrieval.completed` and
`specialist.result`; produces `retrieval.requested`, `specialist.task` and
`recommendation.completed/failed`; talks to the primary LLM through the `openai` client.

Its three inputs are one Kafka consumer (co-partitioned by tenant), so one instance owns all of
a tenant's requests at a time; their state lives in Kafka (`state.KafkaStateStore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiokafka import TopicPartition

from loraswarm.services.planner.guardrails import OutputGuard
from loraswarm.services.planner.llm import PrimaryLLM
from loraswarm.services.planner.machine import Planner
from loraswarm.services.planner.state import KafkaStateStore, MemoryStateStore, StateStore
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import RecommendationRequested, RetrievalCompleted, SpecialistResult
from loraswarm.shared.lanes import by_request
from loraswarm.shared.secrets import SecretRegistry
from loraswarm.shared.settings import Settings
from loraswarm.shared.tenants import TenantRegistry
from loraswarm.shared.tracing import configure_tracing

GROUP = "planner"
log = logging.getLogger("loraswarm.planner")


@dataclass
class PlannerService:
    bus: EventBus
    planner: Planner
    store: StateStore


def build(settings: Settings, *, llm: PrimaryLLM | None = None) -> PlannerService:
    bus = EventBus(settings, service="planner")
    store: StateStore = KafkaStateStore(settings) if settings.broker == "kafka" else MemoryStateStore()
    if llm is None:
        llm = PrimaryLLM(settings.orchestration)
        bus.on_stop(llm.aclose)
    planner = Planner(
        settings.orchestration,
        bus.publish,
        store,
        llm,
        TenantRegistry(settings.orchestration.tenants_dir, defaults_from=settings.data_dir),
        OutputGuard(settings.data_dir, SecretRegistry(settings.data_dir)),
        publish_many=bus.publish_many,
    )
    bus.consumers(
        GROUP,
        {
            RecommendationRequested: planner.on_requested,
            RetrievalCompleted: planner.on_retrieved,
            SpecialistResult: planner.on_result,
        },
        description="The planner: plans, fans out to specialists, composes.",
        # Requests side by side, so one tenant's requests do not wait on each other's LLM calls;
        # each request's events in order (its state is also locked per request).
        concurrency=settings.orchestration.planner_concurrency,
        lane=by_request,
    )
    return PlannerService(bus, planner, store)


def ownership(service: PlannerService) -> Callable[[str], bool]:
    """Whether this instance owns a tenant now (its partition is assigned to us)."""
    store = service.store
    if not isinstance(store, KafkaStateStore):
        return lambda tenant_id: True
    topic = service.bus.topic(RecommendationRequested.event_type)
    group = service.bus.settings.kafka.group(GROUP)

    def owned(tenant_id: str) -> bool:
        for subscriber in service.bus.broker.subscribers:
            consumer = getattr(subscriber, "consumer", None)
            if getattr(subscriber, "group_id", None) == group and consumer is not None:
                return TopicPartition(topic, store.partition_of(tenant_id)) in consumer.assignment()
        return False

    return owned


async def watch_deadlines(service: PlannerService, interval_s: float) -> None:
    owned = ownership(service)
    while True:
        try:
            await service.planner.check_deadlines(owned)
        except Exception:  # one bad state must not stop the deadlines of every other request
            log.exception("deadline check failed")
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def running(settings: Settings, *, llm: PrimaryLLM | None = None) -> AsyncIterator[PlannerService]:
    service = build(settings, llm=llm)
    await service.store.start()
    try:
        async with service.bus:
            watcher = asyncio.create_task(watch_deadlines(service, settings.orchestration.deadline_check_s))
            try:
                yield service
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
    finally:
        await service.store.stop()


async def run(settings: Settings, *, host: str, port: int) -> None:
    configure_tracing("planner", settings.tracing)
    async with running(settings):
        await asyncio.Event().wait()
