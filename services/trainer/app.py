"""Trainer — consumes `adapter.train.requested`; produces `adapter.train.progress`, then
`adapter.published` or `adapter.rejected` (code, reason, numbers); talks to torch + transformers
+ peft, the vector store (the tenant's documents), the adapter store and the canary registry.
"""

from __future__ import annotations

import asyncio

from loraswarm.services.trainer.pipeline import Trainer
from loraswarm.services.trainer.service import TrainerService
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import AdapterTrainRequested
from loraswarm.shared.settings import Settings
from loraswarm.shared.tracing import configure_tracing

SERVICE = "trainer"


def build(settings: Settings, trainer: Trainer | None = None) -> tuple[EventBus, TrainerService]:
    bus = EventBus(settings, service=SERVICE)
    service = TrainerService(bus, trainer or Trainer(settings))

    @bus.consumer(AdapterTrainRequested, group=settings.trainer.group)
    async def on_train_requested(request: AdapterTrainRequested) -> None:
        """Start training the requested adapter (or reject the request at once if it is busy)."""
        await service.accept(request)

    return bus, service


async def run(settings: Settings, *, host: str, port: int) -> None:
    """Train until cancelled (`loraswarm serve trainer`); unfinished jobs resume on the next start."""
    configure_tracing(SERVICE, settings.tracing)
    bus, service = build(settings)
    async with bus:
        await service.resume()
        try:
            await asyncio.Event().wait()
        finally:
            await service.shutdown()
