"""`loraswarm serve`: SIGTERM and SIGINT stop a service cleanly, even when started with SIGINT ignored.

A process started in the background of a non-interactive shell (CI, `nohup`, some supervisors)
inherits SIGINT ignored; Kubernetes and Docker stop containers with SIGTERM. Either way the
service's tasks are cancelled, so its consumers leave the group and its spans are flushed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.processes import ROOT


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_service_stops_on_a_signal_and_says_so(stop: signal.Signals) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "loraswarm.cli", "serve", "planner", "--broker", "memory"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=ignore_sigint,
    )
    try:
        assert child.stdout is not None
        started = child.stdout.readline()  # printed once the signal handlers are in place
        assert started.startswith("starting planner"), started + child.communicate()[0]
        time.sleep(2)  # consuming
        child.send_signal(stop)
        output, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, output
    assert "stopped planner" in output
