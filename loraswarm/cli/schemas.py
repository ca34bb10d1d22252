"""`loraswarm schemas export`: JSON Schema of every event and the AsyncAPI document."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from loraswarm.shared import schemas

app = typer.Typer(
    help="The event contract: JSON Schema per event and the AsyncAPI document.", no_args_is_help=True
)
console = Console()


@app.command()
def export(
    out: Path = typer.Option(Path("schemas"), "--out", help="Folder to write into."),
    check: bool = typer.Option(False, "--check", help="Write nothing; fail if the folder differs."),
) -> None:
    """Write (or with --check, verify) schemas/ from the event models."""
    if check:
        stale = schemas.drift(out)
        if stale:
            console.print(
                f"[red]out of date in {out}:[/red] {', '.join(stale)}; run `loraswarm schemas export`"
            )
            raise typer.Exit(1)
        console.print(f"{out} matches the event models")
        return
    for path in schemas.export(out):
        console.print(f"wrote {path}")
