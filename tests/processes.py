"""Services as separate processes, for tests that need real process boundaries (traces, crashes).

`service_env` turns a test's isolated settings into the LORASWARM_* variables a `loraswarm serve`
child reads; `process` runs one child and stops it with the signal given, killing it if it hangs.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from loraswarm.cli.serve import child_env as service_env
from loraswarm.cli.serve import command as serve
from loraswarm.shared.ports import free_port, free_ports
from loraswarm.shared.settings import Settings

__all__ = ["free_port", "free_ports", "otlp_env", "process", "serve", "service_env", "wait_http"]

ROOT = Path(__file__).parents[1]


@contextlib.contextmanager
def process(
    args: list[str], env: dict[str, str], stop: int, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `args`; on exit send `stop` (SIGINT lets `loraswarm serve` flush its spans), then kill."""
    out = subprocess.PIPE if log is None else log.open("wb")
    child = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield child
    finally:
        child.send_signal(stop)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if log is not None:
            out.close()  # type: ignore[union-attr]


def wait_http(url: str, children: list[subprocess.Popen[bytes]], timeout_s: float = 300) -> None:
    """Wait until GET `url` answers 200; fail early, with the reason, if a child died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [c for c in children if c.poll() is not None]
        assert not dead, f"{dead[0].args!r} exited with {dead[0].returncode}"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


def otlp_env() -> dict[str, str]:
    """Variables sending a child's spans to the local Jaeger over OTLP, exported within 0.1 s."""
    infra = Settings().infra
    return {
        "LORASWARM_TRACING__EXPORTER": "otlp",
        "LORASWARM_TRACING__OTLP_ENDPOINT": f"http://127.0.0.1:{infra.jaeger_otlp_http_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
