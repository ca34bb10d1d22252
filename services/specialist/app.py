"""Specialist service — consumes `specialist.task`; produces `specialist.result` and hand-off
`specialist.task`; talks to the engine chosen by `orchestration.specialist_engine` (the model
server or TGI through `huggingface_hub`, vLLM through `openai`) with the task's adapter stack, and
reads the tenant's own documents through the retriever."""

from __future__ import annotations

import asyncio

from loraswarm.services.specialist.agent import run_task
from loraswarm.services.specialist.engines import Engine, make_engine
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import Passage, SpecialistResult, SpecialistTask
from loraswarm.shared.retrieval import search
from loraswarm.shared.settings import Settings
from loraswarm.shared.tenants import SpecialistConfig, TenantRegistry
from loraswarm.shared.tracing import configure_tracing, trace_inference_clients

GROUP = "specialist"


def build(settings: Settings) -> EventBus:
    bus = EventBus(settings, service="specialist")
    trace_inference_clients()
    tenants = TenantRegistry(settings.orchestration.tenants_dir, defaults_from=settings.data_dir)
    engines: dict[str, Engine] = {}

    def engine_for(tenant_id: str) -> Engine:
        # The model server binds adapters to tenants by a header, so each tenant has its client.
        if tenant_id not in engines:
            engines[tenant_id] = make_engine(settings, tenant_id)
        return engines[tenant_id]

    async def close_engines() -> None:
        for engine in engines.values():
            await engine.close()
        engines.clear()

    bus.on_stop(close_engines)

    async def retrieve(task: SpecialistTask, spec: SpecialistConfig) -> list[Passage]:
        """More of the tenant's passages, for this specialist's question and sources."""
        return await asyncio.to_thread(
            search, settings, task.tenant_id, task.user_id, task.question, 3, None, spec.sources
        )

    @bus.consumer(SpecialistTask, group=GROUP, concurrency=settings.orchestration.specialist_concurrency)
    async def on_task(task: SpecialistTask) -> None:
        """Answer a task with the tenant's adapter; pass it on if the specialist hands off."""
        tenant = tenants.get_or_default(task.tenant_id)
        if tenant is None:
            await bus.publish(
                task.caused(
                    SpecialistResult,
                    specialist=task.specialist,
                    task_id=task.event_id,
                    error=f"tenant {task.tenant_id!r} is not configured",
                )
            )
            return
        outcome = await run_task(
            task, tenant, engine_for(task.tenant_id), retrieve, timeout_s=settings.orchestration.llm_timeout_s
        )
        if outcome.handoff is not None:
            await bus.publish(outcome.handoff)  # before the result, so the planner never misses it
        await bus.publish(outcome.result)

    return bus


async def run(settings: Settings, *, host: str, port: int) -> None:
    configure_tracing("specialist", settings.tracing)
    async with build(settings):
        await asyncio.Event().wait()
