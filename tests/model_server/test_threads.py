"""The engine's forward passes use the configured threads, whatever another thread set before.

torch quirk: a thread created after any thread called `torch.set_num_threads(1)` starts with 1.
The query embedder does that for its own thread, and the demo's engine thread, started later,
ran every forward pass on one core of two.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from loraswarm.services.model_server.server import ModelServer
from loraswarm.shared import torch_threads
from loraswarm.shared.settings import ModelServerSettings, Settings


def set_threads_in_another_thread(n: int) -> None:
    worker = threading.Thread(target=torch.set_num_threads, args=(n,))
    worker.start()
    worker.join()


@pytest.fixture
def lowered_default() -> Iterator[None]:
    set_threads_in_another_thread(1)  # what the query embedder's pool does
    yield
    set_threads_in_another_thread(torch_threads.DEFAULT)


def engine_threads(tmp_path: Path, threads: int) -> int:
    settings = Settings(data_dir=tmp_path, device="cpu", model_server=ModelServerSettings(threads=threads))  # type: ignore[call-arg]
    server = ModelServer.load(settings)
    server.start()
    try:
        deadline = time.monotonic() + 30
        while not server.engine.stats.threads:
            assert time.monotonic() < deadline, "the engine did not start"
            time.sleep(0.01)
        return server.engine.stats.threads
    finally:
        server.stop()


@pytest.mark.usefixtures("lowered_default")
def test_the_engine_uses_torchs_default_not_a_lowered_one(tmp_path: Path) -> None:
    probe: list[int] = []
    later = threading.Thread(target=lambda: probe.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert probe == [1], "the quirk this guards against is gone; this test can go too"
    assert engine_threads(tmp_path, 0) == torch_threads.DEFAULT


@pytest.mark.usefixtures("lowered_default")
def test_the_threads_setting_wins(tmp_path: Path) -> None:
    assert engine_threads(tmp_path, 2) == 2
