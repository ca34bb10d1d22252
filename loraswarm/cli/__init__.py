"""The `loraswarm` command."""

from __future__ import annotations

import importlib
import pkgutil

import typer

from loraswarm.cli import bench, commands, events, infra, schemas, serve

app = typer.Typer(
    name="loraswarm",
    help="Personal LLMs per company and user: one base model, per-tenant adapters, a swarm over Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(infra.app, name="infra")
app.add_typer(schemas.app, name="schemas")
app.add_typer(bench.app, name="bench")
app.command("publish")(events.publish)
app.command("tail")(events.tail)
app.command("serve")(serve.serve)

for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
    importlib.import_module(f"{commands.__name__}.{module.name}").register(app, bench.app)


def main() -> None:
    app()
