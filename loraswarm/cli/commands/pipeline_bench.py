"""`loraswarm bench pipeline`: the orchestration's own cost on real Kafka."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console

console = Console()


def pipeline(
    n: int = typer.Option(160, "--requests", "-n", help="Requests, spread over 8 tenants."),
    rate: float = typer.Option(8.0, "--rate", help="Requests per second (open loop)."),
    out: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Markdown file to update."),
) -> None:
    """End-to-end latency, requests/min and orchestration overhead with 8 tenants, vs one bus round trip."""
    from loraswarm.bench.pipeline import markdown, run
    from loraswarm.shared.settings import Settings

    results = asyncio.run(run(Settings(), n=n, rate=rate, out=out))
    console.print(markdown(results, n, rate))
    console.print(f"written to {out}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    bench.command("pipeline")(pipeline)
