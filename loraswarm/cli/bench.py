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
    rounds: int = typer.Option(
        3, "--rounds", min=1, help="Rounds of baseline then EventBus; the medians are reported."
    ),
    out: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Markdown file to update."),
) -> None:
    """Events through one real Kafka hop: throughput and p50/p99 latency vs bare aiokafka."""
    from loraswarm.bench.events import markdown, run

    settings = Settings()
    results = asyncio.run(run(settings, n=n, rate=rate, out=out, rounds=rounds))
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


@app.command()
def chaos(
    minutes: float = typer.Option(10.0, "--minutes", help="Minutes of the chaos phase (kills every 5-10 s)."),
    baseline_minutes: float = typer.Option(
        0.0, "--baseline-minutes", help="Minutes of the no-kill baseline (0: as long as the chaos phase)."
    ),
    rate: float = typer.Option(0.05, "--rate", help="Requests per second, open loop, over all tenants."),
    tokens: int = typer.Option(
        16, "--tokens", help="Specialists' max_new_tokens (plan and compose scale with it)."
    ),
    kafka_share: float = typer.Option(0.1, "--kafka-share", help="Share of kills that hit the Kafka broker."),
    quick: bool = typer.Option(False, "--quick", help="A smoke run: 1 minute each phase."),
    out: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Markdown file to update."),
) -> None:
    """Requests over several tenants while a killer SIGKILLs services and Kafka: lost, duplicated, latency."""
    import tempfile

    from loraswarm.bench.chaos import run

    if quick:
        minutes = baseline_minutes = 1.0
    import signal

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so the run's clean-up stops its processes and its broker

    signal.signal(signal.SIGTERM, interrupted)
    settings = Settings()
    # Kept: the services' logs are what explains a lost request (the broker's data is removed).
    root = Path(tempfile.mkdtemp(prefix="loraswarm-chaos-"))
    console.print(f"logs in {root}/logs")
    phases, tallies = asyncio.run(
        run(
            settings,
            minutes=minutes,
            baseline_minutes=baseline_minutes or minutes,
            rate=rate,
            tokens=tokens,
            kafka_share=kafka_share,
            out=out,
            root=root,
        )
    )
    for phase, tally in zip(phases, tallies, strict=True):
        console.print(f"{phase.name}: {tally}")
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
