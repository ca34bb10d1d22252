"""vLLM loader — consumes `adapter.published`; produces nothing; talks to the adapter store and
vLLM's run-time LoRA API (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`, `/v1/models`).

Each published adapter, served stacks included, reaches vLLM without a restart: on every
`adapter.published`, and every `orchestration.vllm_reconcile_s` besides (rollbacks, deletions
and CLI-trained adapters emit no event), it loads what the store serves and vLLM lacks and
unloads what vLLM has and the store no longer serves (reconcile.py). Idle unless
`orchestration.specialist_engine` is `vllm`. vLLM unreachable is logged and retried; it never
stops the loader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from loraswarm.services.vllm_loader.reconcile import Applied, reconcile
from loraswarm.shared.adapter_store import AdapterStore
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import AdapterPublished
from loraswarm.shared.settings import Settings
from loraswarm.shared.tracing import configure_tracing

log = logging.getLogger("loraswarm.vllm_loader")


class Loader:
    """One vLLM's adapters, reconciled one pass at a time."""

    def __init__(self, settings: Settings) -> None:
        o = settings.orchestration
        headers = {"Authorization": f"Bearer {o.vllm_api_key.get_secret_value()}"} if o.vllm_api_key else {}
        # vLLM's routes sit beside /v1 at its root; `vllm_url` is the OpenAI base URL.
        root = o.vllm_url.rstrip("/").removesuffix("/v1")
        self.client = httpx.AsyncClient(base_url=root, headers=headers, timeout=o.llm_timeout_s)
        self.store = AdapterStore.under(settings.data_dir)
        self.max_rank = o.vllm_max_lora_rank
        self._lock = asyncio.Lock()

    async def sync(self) -> Applied | None:
        """One reconcile pass (None: vLLM could not be reached; the next pass tries again)."""
        async with self._lock:
            try:
                return await reconcile(self.client, self.store, max_rank=self.max_rank)
            except httpx.HTTPError as exc:
                log.warning("vLLM at %s not reachable: %s", self.client.base_url, exc)
                return None

    async def close(self) -> None:
        await self.client.aclose()


def build(settings: Settings, loader: Loader) -> EventBus:
    bus = EventBus(settings, service="vllm_loader")

    @bus.consumer(AdapterPublished, group=settings.orchestration.vllm_loader_group)
    async def on_published(event: AdapterPublished) -> None:
        """Bring vLLM's adapters up to date with the store, this one included."""
        await loader.sync()

    return bus


async def every(loader: Loader, interval_s: float) -> None:
    while True:
        await loader.sync()
        await asyncio.sleep(interval_s)


async def run(settings: Settings, *, host: str, port: int) -> None:
    if settings.orchestration.specialist_engine != "vllm":
        await asyncio.Event().wait()  # nothing to load: another engine answers the specialists
    configure_tracing("vllm_loader", settings.tracing)
    loader = Loader(settings)
    periodic = asyncio.create_task(every(loader, settings.orchestration.vllm_reconcile_s))
    try:
        async with build(settings, loader):
            await asyncio.Event().wait()
    finally:
        periodic.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await periodic
        await loader.close()
