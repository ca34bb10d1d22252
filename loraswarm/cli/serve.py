"""`loraswarm serve <service>|all`: run services, one or all in one process.

Each service package `loraswarm.services.<name>` has an `app.py` with
`async def run(settings: Settings, *, host: str, port: int) -> None` that runs until cancelled
(services without HTTP ignore host and port).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import pkgutil
import signal
from typing import Literal

import typer
from rich.console import Console

from loraswarm import services
from loraswarm.shared.settings import Settings
from loraswarm.shared.tracing import configure_tracing

console = Console()


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(services.__path__) if m.ispkg)


async def _run(names: list[str], settings: Settings, host: str, port: int) -> None:
    if len(names) > 1:
        # One process, one tracer provider: its spans say `loraswarm`, not the first service's name.
        configure_tracing("loraswarm", settings.tracing)
    # SIGTERM (Kubernetes, Docker, systemd) and SIGINT stop the services the same way: their
    # tasks are cancelled, so consumers commit and leave the group and spans are flushed. The
    # handlers are installed here, not left to Python's defaults: a process started in the
    # background of a non-interactive shell inherits SIGINT ignored, and SIGTERM would kill it
    # on the spot. (A service may install its own handler after this one, as the model server does.)
    stop = asyncio.current_task()
    assert stop is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, stop.cancel)
    runners = []
    for name in names:
        module = importlib.import_module(f"{services.__name__}.{name}.app")
        runners.append(module.run(settings, host=host, port=port))
    console.print(f"starting {', '.join(names)} ({settings.broker}); Ctrl-C or SIGTERM stops")
    try:
        await asyncio.gather(*runners)
    except asyncio.CancelledError:
        console.print(f"stopped {', '.join(names)}")


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
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(names if service == "all" else [service], settings, host, port))
