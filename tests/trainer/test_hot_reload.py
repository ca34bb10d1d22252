"""End to end on the real Kafka: the trainer service publishes adapters that a running model server
serves at once, version after version and after a rollback, without a restart."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from loraswarm.services.model_server.api import create_app
from loraswarm.services.model_server.app import wire_events
from loraswarm.services.model_server.server import ModelServer
from loraswarm.services.trainer.app import build
from loraswarm.services.trainer.pipeline import BaseModels, Trainer
from loraswarm.services.trainer.scope import Scope
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import (
    AdapterPublished,
    AdapterTrainProgress,
    AdapterTrainRequested,
    TrainingData,
)
from loraswarm.shared.settings import ModelServerSettings, Settings
from tests.conftest import isolated_settings
from tests.processes import free_port
from tests.shared.test_bus import until
from tests.trainer.conftest import refund_examples, small, write_examples

PROMPT = "How long do I have to return an order?"


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    settings = small(isolated_settings("kafka", tmp_path, kafka_bootstrap))
    settings.orchestration.tenants_dir = tmp_path / "tenants-config"
    settings.device = "cpu"
    # fp32 whatever the CPU: a 6-step adapter must move logprobs by more than bf16 rounds away.
    settings.model_server = ModelServerSettings(
        max_input_tokens=256, max_total_tokens=512, max_batch_size=8, dtype="float32"
    )
    return settings


@dataclass
class Server:
    url: str
    server: ModelServer


@pytest.fixture
def model_server(settings: Settings) -> Iterator[Server]:
    server = ModelServer.load(settings)
    server.start()
    port = free_port()
    http = uvicorn.Server(
        uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not http.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield Server(f"http://127.0.0.1:{port}", server)
    http.should_exit = True
    thread.join(timeout=30)
    server.stop()


@dataclass
class Seen:
    published: list[AdapterPublished] = field(default_factory=list)
    progress: list[AdapterTrainProgress] = field(default_factory=list)


@pytest.fixture
async def services(settings: Settings, model_server: Server, base_models: BaseModels) -> AsyncIterator[Seen]:
    """The trainer service and the model server's event consumer, each on its own Kafka client."""
    trainer_bus, service = build(settings, Trainer(settings, base=base_models))
    server_bus = EventBus(settings, service="model-server")
    wire_events(server_bus, model_server.server, "model-server")
    seen = Seen()

    @server_bus.broker.subscriber(
        server_bus.topic("adapter.published"), group_id="watch", auto_offset_reset="earliest"
    )
    async def on_published(event: AdapterPublished) -> None:
        seen.published.append(event)

    @server_bus.broker.subscriber(
        server_bus.topic("adapter.train.progress"), group_id="watch", auto_offset_reset="earliest"
    )
    async def on_progress(event: AdapterTrainProgress) -> None:
        seen.progress.append(event)

    async with trainer_bus, server_bus:
        yield seen
        await service.drain()


async def generate(url: str, adapter: str | None) -> tuple[str, float]:
    """Greedy text and the summed log-probability of the prompt's tokens (prefill)."""
    parameters: dict[str, Any] = {"max_new_tokens": 12, "details": True, "decoder_input_details": True}
    if adapter:
        parameters["adapter_id"] = adapter
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.post(
            f"{url}/generate",
            json={"inputs": PROMPT, "parameters": parameters},
            headers={"X-Tenant-Id": "acme"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    prefill = body["details"]["prefill"]
    return body["generated_text"], sum(t["logprob"] for t in prefill if t["logprob"] is not None)


async def resident(url: str) -> list[str]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{url}/admin/adapters")
    return [a["adapter_id"] for a in response.json()["resident"]]


async def until_resident(url: str, adapter_id: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while adapter_id not in await resident(url):
        assert time.monotonic() < deadline, f"{adapter_id} was never loaded by the model server"
        await asyncio.sleep(0.1)


async def test_published_versions_are_served_at_once_without_a_restart(
    settings: Settings, model_server: Server, services: Seen, base_models: BaseModels
) -> None:
    files = Trainer(settings, base=base_models).files
    write_examples(files, Scope("acme"), "v1.jsonl", refund_examples("Acme Rockets", 45))
    write_examples(files, Scope("acme"), "v2.jsonl", refund_examples("Acme Rockets", 7))
    bus = EventBus(settings, service="client")
    base_text, base_logprob = await generate(model_server.url, None)

    async with bus:
        for n, path in enumerate(["v1.jsonl", "v2.jsonl"], start=1):
            await bus.publish(
                AdapterTrainRequested(
                    tenant_id="acme",
                    name="support",
                    data=TrainingData(documents=False, examples_path=path),
                    hyperparameters={"steps": 6, "seed": n},
                )
            )
            await until(lambda n=n: len(services.published) == n, timeout_s=600)  # type: ignore[misc]
            # adapter.published made the running server load the new version before any request.
            await until_resident(model_server.url, f"acme/support@{n}")
            if n == 1:
                v1_text, v1_logprob = await generate(model_server.url, "acme/support")
            else:
                v2_text, v2_logprob = await generate(model_server.url, "acme/support")

    assert [e.version for e in services.published] == ["1", "2"]
    assert {p.step for p in services.progress if p.phase == "training"} >= {2, 4, 6}
    # The adapter changes what is served, and the new version replaced the old one.
    assert v1_logprob != base_logprob and v2_logprob not in (base_logprob, v1_logprob)
    assert (v1_text, v2_text) != (base_text, base_text)
    # A rollback is served from the next request too.
    Trainer(settings, base=base_models).store.rollback("acme", "support")
    rolled_text, rolled_logprob = await generate(model_server.url, "acme/support")
    assert rolled_logprob == pytest.approx(v1_logprob, abs=1e-3) and rolled_text == v1_text
