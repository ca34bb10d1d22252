"""`loraswarm docs`: rewrite README.md's generated sections (configuration, events, CLI, benchmarks)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from loraswarm import docs as readme_docs

console = Console()


def docs(
    readme: Path = typer.Option(
        Path("README.md"), "--readme", help="The README to update, in the repository's root."
    ),
    check: bool = typer.Option(False, "--check", help="Write nothing; fail if a generated section is stale."),
) -> None:
    """Regenerate README.md's reference sections from the settings, schemas/, the CLI and BENCHMARKS.md."""
    try:
        if check:
            stale = readme_docs.stale(readme)
            if stale:
                console.print(f"[red]stale in {readme}:[/red] {', '.join(stale)}; run `loraswarm docs`")
                raise typer.Exit(1)
            console.print(f"{readme} is up to date")
            return
        changed = readme_docs.write(readme)
    except (readme_docs.DocsError, OSError) as exc:
        console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    console.print(f"rewrote {', '.join(changed)} in {readme}" if changed else f"{readme} was up to date")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("docs")(docs)
