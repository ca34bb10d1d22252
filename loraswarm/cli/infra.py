"""`loraswarm infra up|down|status [kafka|weaviate|jaeger]`."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from types import ModuleType

import typer
from rich.console import Console

from loraswarm.infra import jaeger, kafka, vllm, weaviate
from loraswarm.infra.process import InfraError
from loraswarm.shared.settings import InfraSettings, Settings

app = typer.Typer(
    help="Run real Kafka, Weaviate and Jaeger (and vLLM) locally, without Docker.", no_args_is_help=True
)
console = Console()


class Service(StrEnum):
    kafka = "kafka"
    weaviate = "weaviate"
    jaeger = "jaeger"
    vllm = "vllm"


# `infra up` alone: the three every command needs. vLLM (about 6 GB, installed once) is asked for by name.
DEFAULT = [Service.kafka, Service.weaviate, Service.jaeger]

_MODULES: dict[Service, ModuleType] = {
    Service.kafka: kafka,
    Service.weaviate: weaviate,
    Service.jaeger: jaeger,
    Service.vllm: vllm,
}


def _each(
    services: list[Service] | None,
    action: Callable[[ModuleType, InfraSettings], str],
    default: list[Service] = DEFAULT,
) -> None:
    settings = Settings().infra
    chosen = services or default
    failed = False
    for service in chosen:
        try:
            console.print(action(_MODULES[service], settings))
        except InfraError as exc:
            console.print(f"[red]{service.value}:[/red] {exc}", highlight=False)
            failed = True
    if failed:
        raise typer.Exit(1)


@app.command()
def up(
    services: list[Service] | None = typer.Argument(
        None, help="Default: kafka, weaviate and jaeger; `vllm` by name."
    ),
) -> None:
    """Build or fetch (once, cached), start, and wait until healthy. Idempotent."""
    _each(services, lambda m, s: m.up(s))


@app.command()
def down(services: list[Service] | None = typer.Argument(None, help="Default: all four.")) -> None:
    """Stop the services (their data stays in the state folder)."""
    _each(services, lambda m, s: m.down(s), list(Service))


@app.command()
def status(services: list[Service] | None = typer.Argument(None, help="Default: all four.")) -> None:
    """Say what runs, where, and whether it is healthy."""
    _each(services, lambda m, s: m.status(s), list(Service))
    console.print(f"logs: {Settings().infra.logs_dir}")
