"""A request's progress: the steps the gateway saw, and a wake-up for streams waiting on new ones.

The gateway sees a request's steps on their topics (retrieval done, a specialist asked, a
specialist answered, the outcome); each becomes a numbered row in the store (store.py) and
wakes the server-sent-events streams of that request.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loraswarm.shared.envelope import Envelope
from loraswarm.shared.events import (
    RecommendationCompleted,
    RecommendationFailed,
    RetrievalCompleted,
    SpecialistResult,
    SpecialistTask,
)

TERMINAL = frozenset({"completed", "failed"})


def step_of(event: Envelope) -> tuple[str, dict[str, Any]] | None:
    """The progress step an event stands for (stage, details), or None if it is not one."""
    if isinstance(event, RetrievalCompleted):
        return "retrieved", {"passages": len(event.passages), "duration_ms": event.duration_ms}
    if isinstance(event, SpecialistTask):
        return "specialist_asked", {"specialist": event.specialist, "hop": event.hop}
    if isinstance(event, SpecialistResult):
        return "specialist_answered", {"specialist": event.specialist, "ok": event.error is None}
    if isinstance(event, RecommendationCompleted):
        return "completed", {"recommendations": len(event.recommendations), "partial": event.partial}
    if isinstance(event, RecommendationFailed):
        return "failed", {"code": event.code, "reason": event.reason}
    return None


class ProgressBoard:
    """Wakes the streams watching a request when a step of it is recorded."""

    def __init__(self) -> None:
        self._watchers: defaultdict[str, set[asyncio.Event]] = defaultdict(set)

    @contextmanager
    def watch(self, request_id: str) -> Iterator[asyncio.Event]:
        """An event set on each new step. Clear it *before* reading the store, so that a step
        recorded between the read and the wait is not missed."""
        event = asyncio.Event()
        self._watchers[request_id].add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(request_id)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[request_id]

    def notify(self, request_id: str) -> None:
        for event in self._watchers.get(request_id, ()):
            event.set()
