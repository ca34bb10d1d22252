"""The trainer service's promise across a restart: an accepted job that was stopped mid-training
is journalled, runs again on the next start, and is published exactly once."""

from __future__ import annotations

from typing import Any

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
from tests.shared.test_bus import until
from tests.trainer.conftest import refund_examples, write_examples


def watch(bus: EventBus, seen: list[Any]) -> None:
    @bus.broker.subscriber(bus.topic("adapter.published"), group_id="watch", auto_offset_reset="earliest")
    async def on_published(event: AdapterPublished) -> None:
        seen.append(event)

    @bus.broker.subscriber(
        bus.topic("adapter.train.progress"), group_id="watch", auto_offset_reset="earliest"
    )
    async def on_progress(event: AdapterTrainProgress) -> None:
        seen.append(event)


async def test_a_job_stopped_by_a_shutdown_resumes_on_restart_and_publishes_once(
    trainer: Trainer, base_models: BaseModels
) -> None:
    settings = trainer.settings
    write_examples(trainer.files, Scope("acme"), "ex.jsonl", refund_examples("Acme", 45))
    request = AdapterTrainRequested(
        tenant_id="acme",
        name="support",
        data=TrainingData(documents=False, examples_path="ex.jsonl"),
        hyperparameters={"steps": 8},
    )

    seen: list[Any] = []
    bus, service = build(settings, trainer)
    watch(bus, seen)
    async with bus:
        await bus.publish(request)
        await until(lambda: any(isinstance(e, AdapterTrainProgress) for e in seen), timeout_s=300)
        await service.shutdown()  # the process is going away mid-training
    assert not any(isinstance(e, AdapterPublished) for e in seen)
    assert [r.event_id for r in service.journal.pending()] == [request.event_id]
    assert trainer.store.list() == []

    seen.clear()
    bus, service = build(settings, Trainer(settings, base=base_models))
    watch(bus, seen)
    async with bus:
        await service.resume()
        await until(lambda: any(isinstance(e, AdapterPublished) for e in seen), timeout_s=300)
        await service.drain()
    (published,) = [e for e in seen if isinstance(e, AdapterPublished)]
    assert published.causation_id == request.event_id and published.version == "1"
    assert trainer.store.versions("acme", "support") == ["1"]
    assert service.journal.pending() == []
    steps = [e.step for e in seen if isinstance(e, AdapterTrainProgress) and e.phase == "training"]
    assert steps == [2, 4, 6, 8]
