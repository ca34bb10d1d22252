"""The whole swarm on real parts: Kafka, Weaviate, the model server (with real peft adapters),
the retriever, the planner and the specialists, each on its own EventBus, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from loraswarm.services.ingestion.pipeline import Indexer
from loraswarm.services.model_server.api import create_app
from loraswarm.services.model_server.server import ModelServer
from loraswarm.services.planner.app import running as planner_running
from loraswarm.services.retriever.app import build as build_retriever
from loraswarm.services.specialist.app import build as build_specialist
from loraswarm.shared.adapter_store import AdapterStore
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import (
    Document,
    RecommendationCompleted,
    RecommendationFailed,
    RecommendationRequested,
)
from loraswarm.shared.retrieval import load_embedder, retriever
from loraswarm.shared.settings import ModelServerSettings, Settings
from loraswarm.shared.stacks import publish_stack
from loraswarm.shared.vectorstore import shared_store
from tests.model_server.conftest import AdapterFactory, AdapterSpec
from tests.planner.conftest import ACME, write_tenant
from tests.processes import free_port

TENANT_DOCS = {
    "acme": [
        (
            "acme-refunds",
            "Refund policy",
            "Acme Outdoor refunds tents within 30 days when the customer shows the receipt.",
        ),
        ("acme-repairs", "Repairs", "Acme repairs torn tent seams for free during the first two years."),
    ],
    "globex": [
        (
            "globex-refunds",
            "Returns",
            "Globex accepts returns of turbines within 90 days, restocking fee 15 percent.",
        ),
        ("globex-support", "Support hours", "Globex support answers from 8 to 17 on weekdays."),
    ],
}


@contextlib.contextmanager
def model_server(settings: Settings) -> Iterator[str]:
    server = ModelServer.load(settings)
    server.start()
    port = free_port()
    http = uvicorn.Server(
        uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    while not http.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        http.should_exit = True
        thread.join(timeout=30)
        server.stop()


def publish_adapters(settings: Settings, root: Path) -> None:
    factory = AdapterFactory(settings, root / "adapter-src")
    store = AdapterStore.under(settings.data_dir)
    targets = ("q_proj", "v_proj")
    for seed, adapter in enumerate(["acme/company", "acme/user-ana", "globex/company"], start=10):
        tenant, name = adapter.split("/")
        factory.publish(store, AdapterSpec(tenant, name, 8, targets, seed=seed, scale=0.05))
    # What the trainer publishes beside ana's adapter once it passes its gate: the pair, joined.
    publish_stack(store, store.resolve("acme/user-ana"), store.resolve("acme/company"))


def ingest(settings: Settings) -> None:
    indexer = Indexer(shared_store(settings), load_embedder(settings), settings.retrieval)
    for tenant, docs in TENANT_DOCS.items():
        indexer.index(
            tenant,
            [Document(doc_id=d, source="handbook", title=t, content=text) for d, t, text in docs],
        )


@dataclass
class Swarm:
    settings: Settings
    model_server_url: str


@contextlib.asynccontextmanager
async def swarm(settings: Settings, tmp_path: Path) -> AsyncIterator[Swarm]:
    settings.device = "cpu"
    settings.model_server = ModelServerSettings(max_input_tokens=768, max_total_tokens=1024, max_batch_size=8)
    settings.retrieval.collection = f"E2e{uuid.uuid4().hex[:10]}"
    tenants = tmp_path / "tenants"
    # Every acme specialist runs with the user's adapter stacked on the company's.
    # A CPU shared with other work: generous deadlines.
    limits = {**ACME["limits"], "deadline_s": 300}
    acme = {**ACME, "limits": limits, "specialists": [{**s, "adapter": "user"} for s in ACME["specialists"]]}
    write_tenant(tenants, acme)
    write_tenant(
        tenants, {**ACME, "limits": limits, "tenant_id": "globex", "display_name": "Globex", "users": None}
    )
    settings.orchestration.tenants_dir = tenants
    settings.orchestration.llm_timeout_s = 60
    publish_adapters(settings, tmp_path)
    ingest(settings)
    with model_server(settings) as url:
        settings.orchestration.tgi_url = url
        settings.orchestration.primary_llm_base_url = f"{url}/v1"
        specialist = build_specialist(settings)
        retriever_bus = build_retriever(settings, retriever(settings))
        async with planner_running(settings), specialist, retriever_bus:
            yield Swarm(settings, url)
    with contextlib.suppress(Exception):
        store = shared_store(settings)
        store.client.collections.delete(settings.retrieval.collection)


Outcome = RecommendationCompleted | RecommendationFailed


async def outcomes_of(
    settings: Settings, requests: list[RecommendationRequested], timeout_s: float = 300
) -> dict[str, Outcome]:
    """Publish `requests` as a client would and wait for every one's outcome (by request id)."""
    outcomes: dict[str, Outcome] = {}
    client = EventBus(settings, service="client")

    @client.consumer(RecommendationCompleted, group="client")
    async def done(event: RecommendationCompleted) -> None:
        outcomes[str(event.request_id)] = event

    @client.consumer(RecommendationFailed, group="client-failed")
    async def failed(event: RecommendationFailed) -> None:
        outcomes[str(event.request_id)] = event

    async with client:
        for request in requests:
            await client.publish(request)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(outcomes) < len(requests):
            assert asyncio.get_running_loop().time() < deadline, "no outcome in time"
            await asyncio.sleep(0.2)
    return outcomes
