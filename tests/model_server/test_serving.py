"""The server under load: new requests join a running batch, a full queue is a 429, a departed client frees its slot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from loraswarm.shared.adapter_store import AdapterStore
from tests.model_server.conftest import ADAPTERS, Served
from tests.processes import free_port

LONG = {"max_new_tokens": 400}
COUNTING = "Count to one thousand: 1, 2, 3, 4, 5, 6,"  # a prompt the model does not end early


def wait_for(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@contextmanager
def streaming(url: str, parameters: Mapping[str, object]) -> Iterator[Iterator[dict[str, object]]]:
    """A streaming request held open; yields its parsed events; leaving closes the connection."""
    with (
        httpx.Client(base_url=url, timeout=120) as client,
        client.stream(
            "POST", "/generate_stream", json={"inputs": COUNTING, "parameters": parameters}
        ) as answer,
    ):
        assert answer.status_code == 200
        yield (json.loads(line[len("data:") :]) for line in answer.iter_lines() if line.startswith("data:"))


def test_a_new_request_joins_the_running_batch_and_finishes_first(served: Served) -> None:
    with streaming(served.url, {"max_new_tokens": 80}) as long_events:
        next(long_events)  # the long request is decoding
        short = httpx.post(
            f"{served.url}/generate",
            json={"inputs": "Hi", "parameters": {"max_new_tokens": 3, "details": True}},
            timeout=120,
        )
        assert short.status_code == 200
        assert short.json()["details"]["generated_tokens"] == 3
        remaining = list(long_events)
    # The long one was still running when the short one, admitted later, was done.
    assert len(remaining) > 3
    assert remaining[-1]["details"] is None and remaining[-1]["generated_text"] is not None


def test_a_full_queue_answers_429_overloaded(served: Served) -> None:
    engine = served.server.engine
    saved = engine.max_queued
    engine.max_queued = 2
    try:
        with streaming(served.url, LONG) as first, streaming(served.url, LONG) as second:
            next(first), next(second)
            refused = httpx.post(
                f"{served.url}/generate", json={"inputs": "hi", "parameters": {}}, timeout=60
            )
            assert refused.status_code == 429
            assert refused.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
            with streaming(served.url, {"max_new_tokens": 2}) as third:
                assert list(third) == [{"error": "Model is overloaded", "error_type": "overloaded"}]
    finally:
        engine.max_queued = saved
    wait_for(lambda: engine.in_flight == 0)


def test_a_client_that_disconnects_frees_its_slot(served: Served) -> None:
    engine = served.server.engine
    wait_for(lambda: engine.in_flight == 0)
    before = engine.stats.tokens
    with streaming(served.url, LONG) as events:
        next(events), next(events)
        assert engine.in_flight == 1
    wait_for(lambda: engine.in_flight == 0, timeout_s=10)
    assert engine.stats.tokens - before < 400

    # Not streaming: the client gives up waiting; the server notices and stops generating.
    before = engine.stats.tokens
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{served.url}/generate", json={"inputs": COUNTING, "parameters": LONG}, timeout=1.5)
    wait_for(lambda: engine.in_flight == 0, timeout_s=10)
    assert engine.stats.tokens - before < 400


def test_loraswarm_serve_model_server(served: Served, tmp_path: Path) -> None:
    """The command a user runs, as a separate process, with an adapter from its own store."""
    data_dir = tmp_path / "data"
    served.factory.publish(AdapterStore.under(data_dir), ADAPTERS["acme/support"])
    port = free_port()
    env = {
        **os.environ,
        "LORASWARM_DATA_DIR": str(data_dir),
        "LORASWARM_DEVICE": "cpu",
        "LORASWARM_TRACING__EXPORTER": "none",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loraswarm.cli",
            "serve",
            "model-server",
            "--port",
            str(port),
            "--broker",
            "memory",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout or []), daemon=True)
    reader.start()
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert process.poll() is None, "".join(output)
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout_s=120)
        answer = httpx.post(
            f"{url}/generate",
            json={"inputs": "Hello", "parameters": {"max_new_tokens": 3, "adapter_id": "acme/support"}},
            headers={"X-Tenant-Id": "acme"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


def test_a_failing_forward_pass_fails_its_requests_and_the_server_goes_on(served: Served) -> None:
    engine = served.server.engine
    decoder = engine.decoder

    def broken(**_: object) -> None:
        raise RuntimeError("injected fault")

    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 3}}
    engine.decoder = broken
    try:
        failed = httpx.post(f"{served.url}/generate", json=body, timeout=60)
    finally:
        engine.decoder = decoder
    assert failed.status_code == 424
    assert failed.json() == {
        "error": "Request failed during generation: RuntimeError: injected fault",
        "error_type": "generation",
    }
    assert httpx.post(f"{served.url}/generate", json=body, timeout=60).status_code == 200
    assert httpx.get(f"{served.url}/health").status_code == 200
