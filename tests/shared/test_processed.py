"""Processed event ids survive a restart of the consumer (a new process opening the same file)."""

from __future__ import annotations

import uuid
from pathlib import Path

from loraswarm.shared.processed import ProcessedEvents, ProcessedRegistry


def test_marks_survive_reopening_once_flushed(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite"
    store = ProcessedEvents(path)
    kept, lost = uuid.uuid4(), uuid.uuid4()
    store.mark(kept)
    assert store.seen(kept)
    store.flush()
    store.mark(lost)  # never flushed: as if the process died before its next commit
    store._db.close()

    reopened = ProcessedEvents(path)
    assert reopened.seen(kept)
    assert not reopened.seen(lost)


def test_groups_are_independent(tmp_path: Path) -> None:
    registry = ProcessedRegistry(tmp_path)
    event = uuid.uuid4()
    registry.for_group("planner").mark(event)
    assert registry.for_group("planner").seen(event)
    assert not registry.for_group("retriever").seen(event)
    registry.close()
    assert (tmp_path / "processed" / "planner.sqlite").exists()
