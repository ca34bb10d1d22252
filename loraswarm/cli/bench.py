"""`loraswarm bench ...`: benchmarks that write their results into BENCHMARKS.md."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console

from loraswarm.shared.settings import Settings

app = typer.Typer(help="Benchmarks; each measures its baseline in the same run.", no_args_is_help=True)
console = Console()


@app.command()
def events(
    n: int = typer.Option(10_000, "--events", "-n", help="Events per measurement."),
    rate: float = typer.Option(2_000.0, "--rate", help="Paced rate (events/s) of the latency run."),
    out: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Markdown file to update."),
) -> None:
    """Events through one real Kafka hop: throughput and p50/p99 latency vs bare aiokafka."""
    from loraswarm.bench.events import markdown, run

    settings = Settings()
    results = asyncio.run(run(settings, n=n, rate=rate, out=out))
    console.print(markdown(results, n, rate, settings.kafka.bootstrap_servers))
    console.print(f"written to {out}")


@app.command()
def state(
    n: int = typer.Option(100_000, "--finished", "-n", help="Finished requests written to the state topic."),
    repeats: int = typer.Option(3, "--repeats", help="Restarts per case (the median is reported)."),
    out: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Markdown file to update."),
) -> None:
    """Planner restart time with N finished requests in its state topic, vs an empty one."""
    from loraswarm.bench.state import run

    settings = Settings()
    rows = asyncio.run(run(settings, n=n, repeats=repeats, out=out))
    for row in rows:
        console.print(f"{row.case}: {row.seconds:.3f} s, {row.records_read:,} records")
    console.print(f"written to {out}")
