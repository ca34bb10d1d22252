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
def leakage(
    jobs: int = typer.Option(
        20, "--jobs", help="Clean training jobs (false refusals are counted over them)."
    ),
    steps: int = typer.Option(36, "--steps", help="Optimizer steps of each job."),
    sizes: str = typer.Option("10,1000", "--sizes", help="Adapters in the store the gate is timed with."),
    out: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Markdown file to update."),
) -> None:
    """The leakage gate: own vs cross-scope exposure, false refusals, gate time vs store size."""
    from loraswarm.bench.leakage import markdown, run

    results = run(
        jobs=jobs,
        steps=steps,
        sizes=tuple(int(s) for s in sizes.split(",") if s.strip()),
        out=out,
        log=console.print,
    )
    console.print(markdown(results))
    console.print(f"written to {out}")
