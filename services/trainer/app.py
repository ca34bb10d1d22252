"""Trainer — consumes `adapter.train.requested`; produces `adapter.train.progress`, then
`adapter.published` (a user adapter's served stack first) or `adapter.rejected` (code, reason,
numbers); consumes `adapter.published` of company adapters, producing the requests that renew
their users' stacks; talks to torch + transformers + peft, the vector store (the tenant's
documents), the adapter store and the canary registry.
"""

from __future__ import annotations

import asyncio
import logging

from loraswarm.services.trainer.pipeline import Trainer
from loraswarm.services.trainer.renewal import renewal_requests
from loraswarm.services.trainer.service import TrainerService
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import AdapterPublished, AdapterTrainRequested
from loraswarm.shared.settings import Settings
from loraswarm.shared.tracing import configure_tracing

SERVICE = "trainer"
log = logging.getLogger("loraswarm.trainer")


def build(settings: Settings, trainer: Trainer | None = None) -> tuple[EventBus, TrainerService]:
    bus = EventBus(settings, service=SERVICE)
    service = TrainerService(bus, trainer or Trainer(settings))

    @bus.consumer(AdapterTrainRequested, group=settings.trainer.group)
    async def on_train_requested(request: AdapterTrainRequested) -> None:
        """Start training the requested adapter (or reject the request at once if it is busy)."""
        await service.accept(request)

    @bus.consumer(AdapterPublished, group=f"{settings.trainer.group}-renewals")
    async def on_adapter_published(event: AdapterPublished) -> None:
        """A company adapter's new version: ask to renew each user stack still on an older one."""
        tenant = service.trainer.tenant_config_or_none(event.tenant_id)
        requests = renewal_requests(event, service.trainer.store, tenant)
        for request in requests:
            log.info(
                "renewing %s/%s on %s@%s", request.tenant_id, request.name, event.adapter_id, event.version
            )
        await bus.publish_many(requests)

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
