"""`loraswarm serve <service>|all`: run services, one or all in one process.

Each service package `loraswarm.services.<name>` has an `app.py` with
`async def run(settings: Settings, *, host: str, port: int) -> None` that runs until cancelled
(services without HTTP ignore host and port) and, cancelled, stops gracefully within
`settings.shutdown_grace_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import pkgutil
import signal
import sys
import threading
import traceback
from typing import Any, Literal

import typer
from rich.console import Console

from loraswarm import services
from loraswarm.shared.gc_freeze import freeze_startup_objects
from loraswarm.shared.settings import Settings
from loraswarm.shared.tracing import configure_tracing

console = Console()


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `loraswarm serve` child sharing these settings' Kafka (prefix and
    partitions), data folder and tenants; `extra` adds or overrides LORASWARM_* variables."""
    return {
        **os.environ,
        "LORASWARM_BROKER": "kafka",
        "LORASWARM_DATA_DIR": str(settings.data_dir),
        "LORASWARM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "LORASWARM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "LORASWARM_KAFKA__PARTITIONS": str(settings.kafka.partitions),
        "LORASWARM_ORCHESTRATION__TENANTS_DIR": str(settings.orchestration.tenants_dir),
        **extra,
    }


def command(service: str, *options: str) -> list[str]:
    """The command line of `loraswarm serve SERVICE OPTIONS...` in this interpreter."""
    return [sys.executable, "-m", "loraswarm.cli", "serve", service, *options]


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(services.__path__) if m.ispkg)


async def _run(names: list[str], settings: Settings, host: str, port: int) -> int:
    """Run the services until a signal (or until one fails); the exit status."""
    if len(names) > 1:
        # One process, one tracer provider: its spans say `loraswarm`, not the first service's name.
        configure_tracing("loraswarm", settings.tracing)
    modules = {name: importlib.import_module(f"{services.__name__}.{name}.app") for name in names}
    freeze_startup_objects()  # the imports' objects, out of every later full collection's walk
    runners: dict[str, asyncio.Task[None]] = {
        name: asyncio.create_task(module.run(settings, host=host, port=port), name=name)
        for name, module in modules.items()
    }
    # SIGTERM (Kubernetes, Docker, systemd) and SIGINT stop the services the same way: each
    # service's task is cancelled once, so it stops consuming, lets its running handlers finish
    # (or hands them back uncommitted), commits, closes its clients and flushes its spans, within
    # `shutdown_grace_s`. The handlers are installed here, not left to Python's defaults: a
    # process started in the background of a non-interactive shell inherits SIGINT ignored, and
    # SIGTERM would kill it on the spot.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, stopping.set)
    console.print(f"starting {', '.join(names)} ({settings.broker}); Ctrl-C or SIGTERM stops")
    waiter: asyncio.Task[Any] = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait([*runners.values(), waiter], return_when=asyncio.FIRST_COMPLETED)
    failed: list[asyncio.Task[Any]] = [
        t for t in done if t is not waiter and not t.cancelled() and t.exception() is not None
    ]
    grace = settings.shutdown_grace_s
    _exit_after(grace, names)  # whatever hangs, the process is gone within the grace
    for task in runners.values():
        task.cancel()
    waiter.cancel()
    # Each task stops on its own: one that finishes first must not cut the others' shutdown
    # short (a gather would return at the first cancelled one).
    _, pending = await asyncio.wait(runners.values(), timeout=max(0.1, grace - 0.5))
    for task in failed:
        error = task.exception()
        assert error is not None
        console.print(f"{task.get_name()} failed:")
        traceback.print_exception(error)
    if pending:
        console.print(f"not stopped within {grace:.0f} s: {', '.join(t.get_name() for t in pending)}")
    console.print(f"stopped {', '.join(names)}")
    return 1 if failed or pending else 0


def _exit_after(grace_s: float, names: list[str]) -> None:
    """End the process `grace_s` (plus a moment) from now if it has not ended by itself: a
    thread stuck in a native call, or the interpreter waiting on one at exit, cannot keep it."""

    def hard_exit() -> None:
        print(f"loraswarm: {', '.join(names)} did not exit within {grace_s:.0f} s; exiting", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(grace_s, hard_exit)
    timer.daemon = True
    timer.start()


def serve(
    service: str = typer.Argument(..., help="A service name, or `all` for every service in one process."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address of HTTP services."),
    port: int = typer.Option(0, "--port", help="Port of an HTTP service (0: its default)."),
    broker: Literal["memory", "kafka"] | None = typer.Option(
        None, "--broker", help="`kafka` or `memory` (default: LORASWARM_BROKER; `all` defaults to memory)."
    ),
) -> None:
    """Run a service until interrupted."""
    names = available()
    service = service.replace("-", "_")  # `model-server` names the package `model_server`
    if service != "all" and service not in names:
        console.print(f"unknown service {service!r}; available: {', '.join(names) or 'none yet'}, all")
        raise typer.Exit(2)
    settings = Settings()
    if broker is not None:
        settings.broker = broker
    elif service == "all" and "LORASWARM_BROKER" not in os.environ:
        settings.broker = "memory"
    status = 0
    with contextlib.suppress(KeyboardInterrupt):
        status = asyncio.run(_run(names if service == "all" else [service], settings, host, port))
    # The services have committed, closed their clients and flushed their spans. What is left is
    # the interpreter's teardown (freeing the models, joining library threads), which took
    # seconds on a loaded machine and counts against the grace: flush what is buffered and end.
    _flush_and_exit(status)


def _flush_and_exit(status: int) -> None:
    import logging

    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
