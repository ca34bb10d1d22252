"""The trainer on the bus: accept a request, run its job off the event loop, publish the outcome.

A request is accepted in the handler (lock the adapter, journal the request) and trained after
it returns (see jobs.py for why); jobs run `max_concurrent_jobs` at a time in worker threads.
Progress events are published from the job's thread onto the loop and awaited before the
outcome, so a follower never sees `adapter.train.progress` after `adapter.published`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading

from loraswarm.services.trainer.jobs import AdapterBusy, AdapterLock, JobJournal
from loraswarm.services.trainer.pipeline import Cancelled, Outcome, ProgressSink, Published, Trainer
from loraswarm.shared import torch_threads
from loraswarm.shared.bus import EventBus
from loraswarm.shared.envelope import Envelope
from loraswarm.shared.events import (
    AdapterPublished,
    AdapterRejected,
    AdapterTrainProgress,
    AdapterTrainRequested,
)
from loraswarm.shared.tracing import tracer

log = logging.getLogger("loraswarm.trainer")

# Derived-id indexes of progress events: training steps count from 1, evaluation after them.
_EVALUATION_INDEX = 1_000_000


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics an event can carry: JSON has no NaN or infinity."""
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


# Derived-id index of the served stack's `adapter.published` (the adapter's own has index 0).
_STACK_INDEX = 1


def outcome_events(request: AdapterTrainRequested, outcome: Outcome) -> list[Envelope]:
    """The request's outcome; a user adapter's served stack is announced first, so whoever sees
    the user adapter published finds its stack already published (same tenant key: same order)."""
    metrics = finite(outcome.metrics)
    if not isinstance(outcome, Published):
        return [
            request.caused(
                AdapterRejected,
                adapter_id=outcome.adapter_id,
                reason=outcome.reason,
                code=outcome.code,
                metrics=metrics,
            )
        ]
    published = [(0, outcome.adapter_id, outcome.version, outcome.uri)]
    if outcome.stack is not None:
        stack = outcome.stack
        published.insert(0, (_STACK_INDEX, stack.ref.unversioned, str(stack.ref.version), str(stack.path)))
    return [
        request.caused(AdapterPublished, index=i, adapter_id=a, version=v, uri=u, metrics=metrics)
        for i, a, v, u in published
    ]


class TrainerService:
    def __init__(self, bus: EventBus, trainer: Trainer) -> None:
        self.bus = bus
        self.trainer = trainer
        settings = trainer.settings
        self.journal = JobJournal.under(settings.data_dir)
        self.progress_every = settings.trainer.progress_every
        self.slots = asyncio.Semaphore(settings.trainer.max_concurrent_jobs)
        self.tasks: set[asyncio.Task[None]] = set()
        self.stop = threading.Event()

    async def accept(self, request: AdapterTrainRequested) -> None:
        """Start a job for the request, or reject it at once if its adapter is busy."""
        adapter_id = f"{request.tenant_id}/{request.name}"
        try:
            lock = self.trainer.locks.acquire(adapter_id, str(request.event_id))
        except AdapterBusy as exc:
            if exc.holder == str(request.event_id):
                return  # this very request, delivered again while its job runs
            await self.bus.publish(
                request.caused(AdapterRejected, adapter_id=adapter_id, reason=exc.reason, code=exc.code)
            )
            return
        self.journal.add(request)
        task = asyncio.create_task(self._run(request, lock), name=f"train {adapter_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def resume(self) -> None:
        """Run again the jobs a previous process accepted and did not finish."""
        for request in self.journal.pending():
            log.info(
                "resuming the job of %s/%s (request %s)", request.tenant_id, request.name, request.event_id
            )
            await self.accept(request)

    async def drain(self) -> None:
        """Wait for every accepted job to end."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def shutdown(self) -> None:
        """Stop running jobs at their next step; they stay journalled and resume on restart."""
        self.stop.set()
        await self.drain()

    def _train(self, request: AdapterTrainRequested, progress: ProgressSink) -> Outcome:
        """One job, in a worker thread that computes on every core (shared/torch_threads.py)."""
        torch_threads.use()
        return self.trainer.run(request, progress=progress, stop=self.stop)

    async def _run(self, request: AdapterTrainRequested, lock: AdapterLock) -> None:
        loop = asyncio.get_running_loop()
        sent: list[concurrent.futures.Future[None]] = []

        def progress(phase: str, step: int, total: int, loss: float | None) -> None:
            if phase == "training" and step % self.progress_every and step != total:
                return
            event = request.caused(
                AdapterTrainProgress,
                index=step if phase == "training" else _EVALUATION_INDEX + step,
                adapter_id=f"{request.tenant_id}/{request.name}",
                phase=phase,
                step=step,
                total_steps=total,
                loss=loss if loss is not None and math.isfinite(loss) else None,
            )
            sent.append(asyncio.run_coroutine_threadsafe(self.bus.publish(event), loop))

        try:
            with tracer().start_as_current_span(f"train {request.tenant_id}/{request.name}") as span:
                async with self.slots:
                    outcome = await asyncio.to_thread(self._train, request, progress)
                span.set_attribute(
                    "loraswarm.outcome", "published" if isinstance(outcome, Published) else outcome.code
                )
            for future in sent:
                try:
                    await asyncio.wrap_future(future)
                except Exception:  # a lost progress event is not worth failing the job for
                    log.warning("a progress event of %s was not published", request.event_id, exc_info=True)
            await self.bus.publish_many(outcome_events(request, outcome))
            self.journal.remove(request)
        except Cancelled:
            log.info("job of %s/%s stopped; it resumes on restart", request.tenant_id, request.name)
        except Exception:
            # The outcome could not be published (broker down): the journal keeps the job, a restart
            # re-runs it, and the published version is found again instead of being trained twice.
            log.exception("job of %s/%s ended without a published outcome", request.tenant_id, request.name)
        finally:
            lock.release()
