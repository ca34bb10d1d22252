"""The startup freeze: what the imports made leaves the collector's walk; what comes after does not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from loraswarm.shared.gc_freeze import freeze_startup_objects


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A reference cycle no one holds: only the cyclic collector frees it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def frozen() -> Iterator[int]:
    yield freeze_startup_objects()
    gc.unfreeze()  # the rest of the test session keeps the collector as it was


def test_the_startup_objects_are_frozen_and_garbage_made_later_is_still_collected(frozen: int) -> None:
    assert frozen > 10_000 and gc.get_freeze_count() > 10_000  # pydantic, the settings, the test modules
    later = cycle()
    gc.collect()
    assert later() is None


def test_garbage_left_by_startup_is_collected_before_the_freeze() -> None:
    left = cycle()
    freeze_startup_objects()
    try:
        assert left() is None  # freed, not frozen for good
    finally:
        gc.unfreeze()
