"""Specialist service — consumes `specialist.task`; produces `specialist.result` and hand-off
`specialist.task`; talks to TGI (or the model server) through `huggingface_hub`, with the task's
adapter, and reads the tenant's own documents through the retriever."""

from __future__ import annotations

import asyncio

from huggingface_hub import AsyncInferenceClient

from loraswarm.services.specialist.agent import run_task
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import Passage, SpecialistResult, SpecialistTask
from loraswarm.shared.retrieval import search
from loraswarm.shared.settings import Settings
from loraswarm.shared.tenants import SpecialistConfig, TenantRegistry
from loraswarm.shared.tracing import configure_tracing, trace_inference_clients

GROUP = "specialist"


def model_server_headers(tenant_id: str, settings: Settings) -> dict[str, str]:
    """The tenant the model server binds adapters to, and the service key it checks that by."""
    headers = {"X-Tenant-Id": tenant_id}
    key = settings.orchestration.tgi_api_key
    if key is not None:
        headers["Authorization"] = f"Bearer {key.get_secret_value()}"
    return headers


def build(settings: Settings) -> EventBus:
    bus = EventBus(settings, service="specialist")
    trace_inference_clients()
    tenants = TenantRegistry(settings.orchestration.tenants_dir, defaults_from=settings.data_dir)
    clients: dict[str, AsyncInferenceClient] = {}

    def tgi_for(tenant_id: str) -> AsyncInferenceClient:
        # The model server binds adapters to tenants by this header (TGI ignores it).
        if tenant_id not in clients:
            clients[tenant_id] = AsyncInferenceClient(
                base_url=settings.orchestration.tgi_url,
                timeout=settings.orchestration.llm_timeout_s,
                headers=model_server_headers(tenant_id, settings),
            )
        return clients[tenant_id]

    async def close_clients() -> None:
        for client in clients.values():
            await client.close()  # type: ignore[no-untyped-call]  # untyped in huggingface_hub
        clients.clear()

    bus.on_stop(close_clients)

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
            task, tenant, tgi_for(task.tenant_id), retrieve, timeout_s=settings.orchestration.llm_timeout_s
        )
        if outcome.handoff is not None:
            await bus.publish(outcome.handoff)  # before the result, so the planner never misses it
        await bus.publish(outcome.result)

    return bus


async def run(settings: Settings, *, host: str, port: int) -> None:
    configure_tracing("specialist", settings.tracing)
    async with build(settings):
        await asyncio.Event().wait()
