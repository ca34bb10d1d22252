"""`loraswarm demo`: the main job on the embedded default (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def demo(
    examples: Path = typer.Option(Path("examples"), "--examples", help="The example tenants folder."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Where the demo keeps its state (default: ~/.cache/loraswarm/demo)."
    ),
    steps: int = typer.Option(
        20,
        "--steps",
        min=0,
        help="Training steps per adapter (first run only); 0: no training, the base model answers.",
    ),
    retrain: bool = typer.Option(
        False,
        "--retrain",
        help="Train every adapter again, even one published or refused before for the same data.",
    ),
) -> None:
    """Ingest the example tenants, train or reuse their adapters, and answer one question per tenant and user."""
    from loraswarm.demo import DemoError, run_demo
    from loraswarm.shared.vectorstore import VectorStoreUnavailable

    try:
        run_demo(examples, data_dir, steps, console, retrain=retrain)
    except (DemoError, VectorStoreUnavailable) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("demo")(demo)
