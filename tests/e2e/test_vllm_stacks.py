"""Served stacks on real vLLM, end to end on the real local Kafka, Weaviate and vLLM (CPU build).

The trainer (over Kafka) trains and gates acme's company adapter, then ana's user adapter on top
of it, and publishes ana's served stack; the vLLM loader loads it into the running vLLM at run
time; ana's question, asked of the specialist over Kafka with the tenant's passages from
Weaviate, is answered by vLLM with her stack (the specialist's span says
`gen_ai.request.model` = `acme/user-ana.stack`). An adapter vLLM does not have is refused (404)
and the specialist falls back to the company adapter. The company adapter is then republished:
until ana's renewed pair has passed its gate, vLLM still serves the old pair under her stack's id;
then the stack moves to the new pair, which vLLM loads without a restart.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from loraswarm.services.specialist.app import build as build_specialist
from loraswarm.services.trainer.app import build as build_trainer
from loraswarm.services.trainer.pipeline import BaseModels, Trainer
from loraswarm.services.trainer.scope import Scope
from loraswarm.services.vllm_loader.app import Loader
from loraswarm.services.vllm_loader.app import build as build_loader
from loraswarm.services.vllm_loader.reconcile import loaded
from loraswarm.shared.adapter_store import AdapterVersion
from loraswarm.shared.bus import EventBus
from loraswarm.shared.envelope import utc_now
from loraswarm.shared.events import (
    AdapterPublished,
    AdapterRejected,
    AdapterTrainRequested,
    SpecialistResult,
    SpecialistTask,
    TrainingData,
)
from loraswarm.shared.settings import Settings
from loraswarm.shared.stacks import StackPart, parts_of
from loraswarm.shared.tenants import TenantRegistry
from loraswarm.shared.vectorstore import shared_store
from tests.conftest import isolated_settings
from tests.e2e.world import ingest
from tests.planner.conftest import ACME, write_tenant
from tests.trainer.conftest import refund_examples, small, weaviate_ready, write_examples

pytestmark = [pytest.mark.vllm, pytest.mark.weaviate, pytest.mark.kafka]
__all__ = ["weaviate_ready"]  # the fixture

QUESTION = "Can a tent be refunded?"


class Client:
    """What a client sees on the bus: every adapter.published and adapter.rejected, every result."""

    def __init__(self, settings: Settings) -> None:
        self.bus = EventBus(settings, service="client")
        self.published: list[AdapterPublished] = []
        self.rejected: list[AdapterRejected] = []
        self.results: dict[str, SpecialistResult] = {}

        @self.bus.consumer(AdapterPublished, group="client-published")
        async def on_published(event: AdapterPublished) -> None:
            self.published.append(event)

        @self.bus.consumer(AdapterRejected, group="client-rejected")
        async def on_rejected(event: AdapterRejected) -> None:
            self.rejected.append(event)

        @self.bus.consumer(SpecialistResult, group="client-results")
        async def on_result(event: SpecialistResult) -> None:
            self.results[str(event.task_id)] = event

    async def until(self, what: str, done: Callable[[], bool], timeout_s: float = 600) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not done():
            assert not self.rejected, f"waiting for {what}: {self.rejected}"
            assert asyncio.get_running_loop().time() < deadline, f"no {what} within {timeout_s:.0f} s"
            await asyncio.sleep(0.2)

    def has(self, adapter_id: str, version: str) -> bool:
        return any(e.adapter_id == adapter_id and e.version == version for e in self.published)

    async def ask(self, user: str, adapter_ids: list[str]) -> SpecialistResult:
        task = SpecialistTask(
            tenant_id="acme",
            user_id=user,
            specialist="support",
            question=QUESTION,
            adapter_ids=adapter_ids,
            deadline_at=utc_now() + timedelta(minutes=5),
        )
        await self.bus.publish(task)
        await self.until(f"the answer to {user}'s question", lambda: str(task.event_id) in self.results, 300)
        result = self.results[str(task.event_id)]
        assert result.error is None, result.error
        return result


def train(name: str, user: str | None, **hyperparameters: float | int | str) -> AdapterTrainRequested:
    return AdapterTrainRequested(
        tenant_id="acme",
        user_id=user,
        name=name,
        data=TrainingData(documents=False, examples_path="ex.jsonl"),
        hyperparameters=dict(hyperparameters),
    )


async def vllm_roots(url: str) -> dict[str, str]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{url}/models")
        response.raise_for_status()
        return loaded(response.json())


def folder(version: AdapterVersion) -> str:
    """The folder the loader hands vLLM for a version (what vLLM then lists as its `root`)."""
    return str(version.path.resolve())


async def until_loaded(url: str, name: str, root: str, timeout_s: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (await vllm_roots(url)).get(name) != root:
        assert asyncio.get_running_loop().time() < deadline, f"vLLM did not load {name} from {root}"
        await asyncio.sleep(0.2)


def served_models(spans: InMemorySpanExporter) -> list[str]:
    return [
        str((s.attributes or {}).get("gen_ai.request.model"))
        for s in spans.get_finished_spans()
        if s.name.startswith("text_completion") and (s.attributes or {}).get("gen_ai.provider.name") == "vllm"
    ]


async def test_vllm_serves_exactly_the_gated_stack_loaded_at_run_time_and_renewed_by_events(
    kafka_bootstrap: str, weaviate_ready: None, vllm_url: str, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    settings: Settings = small(isolated_settings("kafka", tmp_path, kafka_bootstrap))
    settings.device = "cpu"
    t = settings.trainer
    t.max_quality_regression = 10.0  # tiny data sets: held-out loss is not what this test is about
    o = settings.orchestration
    o.specialist_engine = "vllm"
    o.vllm_url = vllm_url
    o.vllm_reconcile_s = 3600.0  # only the events load adapters here
    o.llm_timeout_s = 120
    o.tenants_dir = tmp_path / "tenants"
    write_tenant(
        o.tenants_dir, {**ACME, "users": ["ana", "bo"], "limits": {**ACME["limits"], "deadline_s": 300}}
    )
    settings.retrieval.collection = f"E2e{uuid.uuid4().hex[:10]}"
    ingest(settings)

    trainer = Trainer(settings, base=BaseModels(settings))
    write_examples(trainer.files, Scope("acme"), "ex.jsonl", refund_examples("Acme", 30))
    write_examples(trainer.files, Scope("acme", "ana"), "ex.jsonl", refund_examples("Ana's team", 14))
    acme = TenantRegistry(o.tenants_dir).get("acme")
    support = acme.specialist("support") if acme else None
    assert support is not None and support.adapter == "user"  # ana's questions go to her stack

    trainer_bus, service = build_trainer(settings, trainer)
    loader = Loader(settings)
    client = Client(settings)
    try:
        async with trainer_bus, build_loader(settings, loader), build_specialist(settings), client.bus:
            # The company adapter, then ana's on top of it: gated, published, her stack with it.
            await client.bus.publish(train("company", None))
            await client.until("acme/company@1", lambda: client.has("acme/company", "1"))
            # Long enough that her renewal below is still training when the republished company
            # adapter is first served.
            await client.bus.publish(train("user-ana", "ana", steps=40))
            await client.until("acme/user-ana@1", lambda: client.has("acme/user-ana", "1"))
            stack1 = trainer.store.resolve("acme/user-ana.stack@1")
            assert parts_of(stack1.manifest) == [
                StackPart(name="company", version="1"),
                StackPart(name="user-ana", version="1"),
            ]
            assert client.has("acme/user-ana.stack", "1")

            # vLLM loads the stack at run time (no restart): the loader acted on adapter.published.
            await until_loaded(vllm_url, "acme/user-ana.stack", folder(stack1))
            first = await client.ask("ana", ["acme/company", "acme/user-ana"])
            assert first.adapter_ids == ["acme/company", "acme/user-ana"]
            assert served_models(spans)[-1] == "acme/user-ana.stack"

            # An adapter vLLM does not have is refused; bo has none, so he gets the company's.
            async with openai.AsyncOpenAI(base_url=vllm_url, api_key="not-needed", max_retries=0) as oa:
                with pytest.raises(openai.NotFoundError):
                    await oa.completions.create(model="acme/user-bo.stack", prompt="Hi", max_tokens=2)
            spans.clear()
            bo = await client.ask("bo", ["acme/company", "acme/user-bo"])
            assert bo.adapter_ids == ["acme/company"]
            assert served_models(spans) == ["acme/user-bo.stack", "acme/company"]

            # The company adapter republished: ana is still served the pair that was gated...
            await client.bus.publish(train("company", None, learning_rate=1e-2))
            await client.until("acme/company@2", lambda: client.has("acme/company", "2"))
            company2 = trainer.store.resolve("acme/company@2")
            await until_loaded(vllm_url, "acme/company", folder(company2))
            assert not client.has("acme/user-ana", "2"), "her renewal finished before the check"
            assert (await vllm_roots(vllm_url))["acme/user-ana.stack"] == folder(stack1)
            spans.clear()
            again = await client.ask("ana", ["acme/company", "acme/user-ana"])
            assert served_models(spans) == ["acme/user-ana.stack"]
            assert again.answer == first.answer  # the same weights, greedy
            assert not client.has("acme/user-ana", "2"), "her renewal finished during the check"
            checked = utc_now()

            # ...until her adapter, renewed by that event on company@2, passes its gate.
            await client.until("acme/user-ana@2", lambda: client.has("acme/user-ana", "2"))
            (ana2,) = [e for e in client.published if (e.adapter_id, e.version) == ("acme/user-ana", "2")]
            print(
                f"the renewed pair was published {(ana2.occurred_at - checked).total_seconds():.1f} s after the check"
            )
            renewed = trainer.store.resolve("acme/user-ana.stack")
            assert parts_of(renewed.manifest) == [
                StackPart(name="company", version="2"),
                StackPart(name="user-ana", version="2"),
            ]
            renewal = trainer.store.resolve("acme/user-ana@2").manifest
            assert getattr(renewal, "stacked_on", None) == "acme/company@2"
            await until_loaded(vllm_url, "acme/user-ana.stack", folder(renewed))
            spans.clear()
            await client.ask("ana", ["acme/company", "acme/user-ana"])
            assert served_models(spans) == ["acme/user-ana.stack"]
            await service.shutdown()
    finally:
        await loader.close()
        shared_store(settings).client.collections.delete(settings.retrieval.collection)
