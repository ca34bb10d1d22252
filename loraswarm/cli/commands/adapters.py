"""`loraswarm adapters train|data|list|show|eval|rollback|delete` and `loraswarm bench training`.

`train` runs the trainer's own pipeline in this process (the same code the trainer service runs
for `adapter.train.requested`), against the same data folder, vector store and adapter store,
with progress bars for training and evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from loraswarm.shared.settings import Settings

console = Console()
adapters_app = typer.Typer(
    help="Per-company and per-user adapters: train, list, show, evaluate, roll back, delete.",
    no_args_is_help=True,
)


def parse_setting(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as JSON when it is JSON (`steps=20`, `use_dora=true`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"{text!r} is not key=value")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _progress_bars() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _sink(bars: Progress) -> Any:
    tasks: dict[str, Any] = {}

    def progress(phase: str, step: int, total: int, loss: float | None) -> None:
        if phase not in tasks:
            label = "training  " if phase == "training" else "evaluating"
            tasks[phase] = bars.add_task(label, total=total, loss="")
        bars.update(
            tasks[phase], completed=step, total=total, loss=f"loss {loss:.3f}" if loss is not None else ""
        )

    return progress


def _metrics_table(metrics: dict[str, float], title: str) -> Table:
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4g}")
    return table


def _plot(
    folder: Path, label: str, losses: list[float] | None, metrics: dict[str, float], report: Any
) -> None:
    from loraswarm.services.trainer import plots

    stem = label.replace("/", "--")
    if losses:
        path = plots.loss_curve(losses, metrics, folder / f"{stem}-loss.png", f"{label}: loss")
        console.print(f"loss curve: {path}")
    if report and (report.get("owner") or report.get("cross")):
        path = plots.exposure_chart(report, folder / f"{stem}-exposure.png", f"{label}: canary exposure")
        console.print(f"exposure chart: {path}")


@adapters_app.command()
def train(
    tenant: str = typer.Option(..., "--tenant", help="The company (tenant id)."),
    user: str | None = typer.Option(None, "--user", help="Train this user's private adapter."),
    name: str | None = typer.Option(
        None, "--name", help="Adapter name (default: `company`, or `user-<id>`)."
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        exists=True,
        dir_okay=False,
        help="JSONL chat examples (copied into the tenant's data).",
    ),
    documents: bool = typer.Option(
        True, "--documents/--no-documents", help="Train on the scope's ingested documents too."
    ),
    source: list[str] = typer.Option([], "--source", help="Only documents of this source (repeatable)."),
    method: str | None = typer.Option(None, "--method", help="`lora` (default) or `llama_adapter`."),
    base_model: str | None = typer.Option(None, "--base-model", help="Refuse unless this is the base model."),
    sets: list[str] = typer.Option([], "--set", help="A hyper-parameter, key=value (repeatable): steps=200."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write the loss curve and exposure chart PNGs here."
    ),
) -> None:
    """Train, evaluate, gate and publish an adapter on the tenant's (or user's) data."""
    from loraswarm.services.trainer.jobs import AdapterBusy
    from loraswarm.services.trainer.pipeline import Published, Trainer
    from loraswarm.services.trainer.scope import Scope
    from loraswarm.shared.events import AdapterTrainRequested, TrainingData

    settings = Settings()
    trainer = Trainer(settings)
    scope = Scope(tenant, user)
    examples = trainer.files.import_file(scope, data) if data else None
    request = AdapterTrainRequested(
        tenant_id=tenant,
        user_id=user,
        name=name or (f"user-{user}" if user else "company"),
        method=method or settings.trainer.method,  # type: ignore[arg-type]
        base_model=base_model,
        hyperparameters=dict(parse_setting(s) for s in sets),
        data=TrainingData(documents=documents, examples_path=examples, sources=source),
    )
    adapter_id = f"{tenant}/{request.name}"
    try:
        lock = trainer.locks.acquire(adapter_id, str(request.event_id))
    except AdapterBusy as exc:
        console.print(f"[red]rejected (already_training): {exc.reason}[/red]")
        raise typer.Exit(1) from exc
    with lock, _progress_bars() as bars:
        outcome = trainer.run(request, progress=_sink(bars))
    if isinstance(outcome, Published):
        console.print(f"[green]published {outcome.adapter_id}@{outcome.version}[/green]  {outcome.uri}")
        extra = outcome.manifest.model_extra or {}
        console.print(_metrics_table(outcome.metrics, f"{adapter_id}@{outcome.version}"))
        if plot:
            _plot(
                plot,
                f"{adapter_id}@{outcome.version}",
                extra.get("loss_curve"),
                outcome.metrics,
                extra.get("leakage"),
            )
        return
    console.print(f"[red]rejected ({outcome.code}): {outcome.reason}[/red]")
    if outcome.metrics:
        console.print(_metrics_table(outcome.metrics, f"{adapter_id}: measured before the refusal"))
    raise typer.Exit(1)


@adapters_app.command("data")
def data_command(
    tenant: str = typer.Option(..., "--tenant", help="The company (tenant id)."),
    user: str | None = typer.Option(
        None, "--user", help="This user's private data instead of the company's."
    ),
    sample: int = typer.Option(2, "--sample", min=0, help="Examples shown per kind."),
    out: Path | None = typer.Option(None, "--out", help="Also write every built example here (JSONL)."),
) -> None:
    """The training set the builder makes of a scope's documents, without training: counts per
    kind, a sample, what was dropped and why."""
    from loraswarm.services.trainer.builder import KINDS, llm_enabled
    from loraswarm.services.trainer.errors import Rejected
    from loraswarm.services.trainer.pipeline import Trainer
    from loraswarm.services.trainer.scope import Scope

    settings = Settings()
    scope = Scope(tenant, user)
    try:
        built = Trainer(settings).build_set(scope)
    except Rejected as exc:
        console.print(f"[red]{exc.code}: {exc.reason}[/red]")
        raise typer.Exit(1) from exc
    generators = ["extractor"] if settings.trainer.builder.extractor else []
    generators += ["llm"] if llm_enabled(settings) else []
    console.print(
        f"{scope}: {built.chunks} chunk(s), generators: {', '.join(generators) or 'none'}, "
        f"{built.seconds:.2f} s"
    )
    kept, dropped = built.kept(), built.dropped()
    table = Table(title="examples per kind")
    for column in ("kind", "kept", "dropped (why)"):
        table.add_column(column)
    for kind in KINDS:
        why = ", ".join(f"{n} {reason}" for (k, reason), n in sorted(dropped.items()) if k == kind)
        table.add_row(kind, str(kept[kind]), why or "0")
    console.print(table)
    if built.failures:
        console.print(
            "generator failures (skipped): "
            + ", ".join(f"{n} {reason}" for reason, n in sorted(built.failures.items()))
        )
    for kind in KINDS:
        for example in [e for e in built.examples if e.kind == kind][:sample]:
            console.print(f"[bold]{kind}[/bold] from {example.chunk} ({example.generator})")
            console.print(f"  Q: {example.question[-300:]}", markup=False)
            console.print(f"  A: {example.answer}", markup=False)
    for drop in built.drops[: sample * 2]:
        console.print(f"dropped {drop.kind} from {drop.chunk}: {drop.reason} — {drop.detail}", markup=False)
    if out is not None:
        lines = [
            json.dumps(
                {"kind": e.kind, "chunk": e.chunk, "generator": e.generator, "also": list(e.also),
                 "messages": [m.model_dump() for m in e.messages]},
                ensure_ascii=False,
            )
            for e in built.examples
        ]  # fmt: skip
        out.write_text("\n".join(lines) + ("\n" if lines else ""))
        console.print(f"written {len(lines)} example(s) to {out}")
    if not built.examples:
        console.print(f"[yellow]nothing built for {scope}: ingest its documents first[/yellow]")
        raise typer.Exit(1)


@adapters_app.command("list")
def list_adapters(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's adapters."),
) -> None:
    """Every published adapter's current version, with its main numbers."""
    from loraswarm.shared.adapter_store import AdapterStore

    store = AdapterStore.under(Settings().data_dir)
    found = store.list(tenant)
    if not found:
        console.print("no adapters" + (f" of tenant {tenant}" if tenant else ""))
        return
    table = Table()
    for column in (
        "adapter",
        "current",
        "versions",
        "method",
        "user",
        "created",
        "held-out ppl",
        "owner exposure",
    ):
        table.add_column(column)
    for v in found:
        m = v.manifest
        table.add_row(
            f"{v.ref.tenant_id}/{v.ref.name}",
            str(v.ref.version),
            ",".join(store.versions(v.ref.tenant_id, v.ref.name)),
            m.method,
            m.user_id or "-",
            m.created_at.strftime("%Y-%m-%d %H:%M"),
            f"{m.metrics['heldout_ppl']:.2f}" if "heldout_ppl" in m.metrics else "-",
            f"{m.metrics['owner_exposure_mean']:.2f} bits" if "owner_exposure_mean" in m.metrics else "-",
        )
    console.print(table)


@adapters_app.command()
def show(
    adapter_id: str = typer.Argument(..., help="`<tenant>/<name>[@<version>]`."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write the loss curve and exposure chart PNGs here."
    ),
) -> None:
    """An adapter version's manifest: data, hyper-parameters, metrics, leakage report."""
    from loraswarm.shared.adapter_store import AdapterError, AdapterStore

    store = AdapterStore.under(Settings().data_dir)
    try:
        version = store.resolve(adapter_id)
    except AdapterError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    m = version.manifest
    extra = m.model_extra or {}
    console.print(f"[bold]{version.ref.id}[/bold]  ({version.path})")
    summary = m.model_dump(exclude={"metrics", "loss_curve", "leakage"})
    summary["current"] = store.current(version.ref.tenant_id, version.ref.name)
    summary["versions"] = store.versions(version.ref.tenant_id, version.ref.name)
    console.print_json(json.dumps(summary, default=str))
    console.print(_metrics_table(m.metrics, "metrics"))
    if plot:
        _plot(plot, version.ref.id, extra.get("loss_curve"), m.metrics, extra.get("leakage"))


@adapters_app.command("eval")
def evaluate(
    adapter_id: str = typer.Argument(..., help="`<tenant>/<name>[@<version>]`."),
    plot: Path | None = typer.Option(None, "--plot", help="Write the exposure chart PNG here."),
) -> None:
    """Measure a published adapter again on its scope's current data: held-out quality and leakage."""
    from loraswarm.services.trainer.errors import Rejected
    from loraswarm.services.trainer.pipeline import Trainer

    trainer = Trainer(Settings())
    with _progress_bars() as bars:
        try:
            version, metrics, report = trainer.evaluate(adapter_id, progress=_sink(bars))
        except Rejected as exc:
            console.print(f"[red]cannot evaluate ({exc.code}): {exc.reason}[/red]")
            raise typer.Exit(1) from exc
    console.print(_metrics_table(metrics, f"{version.ref.id}, measured now"))
    for line in ([report.owner] if report.owner else []) + report.cross:
        colour = "red" if line.exposed and line is not report.owner else "green"
        console.print(f"[{colour}]{line.describe()}[/{colour}]")
    if plot:
        _plot(plot, f"{version.ref.id}-eval", None, metrics, report.to_dict())
    if report.leaks:
        raise typer.Exit(1)


@adapters_app.command()
def rollback(
    adapter_id: str = typer.Argument(..., help="`<tenant>/<name>`."),
    to: str | None = typer.Option(None, "--to", help="The version to make current (default: the previous)."),
) -> None:
    """Make an earlier version current; the model server serves it from its next request. The
    served stacks it is part of roll back with it (to the pair gated with that version)."""
    from loraswarm.shared.adapter_store import AdapterError, AdapterStore, parse_adapter_id
    from loraswarm.shared.stacks import rollback_with_stacks

    store = AdapterStore.under(Settings().data_dir)
    try:
        ref = parse_adapter_id(adapter_id)
        version, stacks = rollback_with_stacks(store, ref.tenant_id, ref.name, to or ref.version)
    except AdapterError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"{ref.tenant_id}/{ref.name}: version {version} is current")
    for stack, now in stacks.items():
        console.print(
            f"{ref.tenant_id}/{stack}: version {now} is current"
            if now
            else f"{ref.tenant_id}/{stack}: withdrawn (no pair was gated with version {version}; its user "
            "is served the company adapter alone until the stack is renewed)"
        )


@adapters_app.command()
def delete(
    adapter_id: str | None = typer.Argument(
        None, help="`<tenant>/<name>`: delete this adapter, every version."
    ),
    tenant: str | None = typer.Option(
        None, "--tenant", help="Delete every adapter and trainer file of a tenant."
    ),
    documents: bool = typer.Option(
        False, "--documents", help="With --tenant: also delete its document shard."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete an adapter (all versions, and the served stacks it is part of), or a whole tenant's
    adapters and data (its scopes' canaries too)."""
    from loraswarm.services.gateway.tenant_admin import TenantAdminError, delete_data
    from loraswarm.shared.adapter_store import AdapterError, AdapterStore, parse_adapter_id
    from loraswarm.shared.stacks import delete_with_stacks

    if (adapter_id is None) == (tenant is None):
        console.print("[red]name an adapter or --tenant, not both[/red]")
        raise typer.Exit(2)
    settings = Settings()
    store = AdapterStore.under(settings.data_dir)
    what = (
        f"adapter {adapter_id}" if adapter_id else f"tenant {tenant}'s adapters, canaries and trainer files"
    )
    if not yes and not typer.confirm(f"delete {what}{' and document shard' if documents else ''}?"):
        raise typer.Exit(1)
    if adapter_id is not None:
        try:
            ref = parse_adapter_id(adapter_id)
        except AdapterError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
        stacks = delete_with_stacks(store, ref.tenant_id, ref.name)
        if stacks is None:
            console.print(f"[red]adapter {ref.tenant_id}/{ref.name} does not exist[/red]")
            raise typer.Exit(1)
        console.print(f"deleted {ref.tenant_id}/{ref.name}")
        for stack in stacks:
            console.print(f"deleted {ref.tenant_id}/{stack} (the served stack it was part of)")
        return
    assert tenant is not None
    try:
        removed = delete_data(settings, tenant, documents=documents)
    except TenantAdminError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"tenant {tenant}: deleted {', '.join(removed) or 'nothing (there was nothing)'}")
    console.print(
        f"(its configuration and API keys stay: `loraswarm tenants delete {tenant}` removes everything)"
    )


def bench_training(
    steps: int = typer.Option(20, "--steps", help="Timed optimizer steps of each loop."),
    publish_steps: int = typer.Option(
        0, "--publish-steps", help="Steps of the train-and-publish job (0: the default hyper-parameters)."
    ),
    out: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Markdown file to update."),
) -> None:
    """Trainer tokens/s vs a bare peft loop on the same batches; time to train and publish one adapter."""
    from loraswarm.bench.training import markdown, run

    results = run(Settings(), steps=steps, publish_steps=publish_steps, out=out, log=console.print)
    console.print(markdown(results))
    console.print(f"written to {out}")


def bench_recipe(
    quick: bool = typer.Option(False, "--quick", help="Two 2-step recipes: a smoke run of the sweep."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated company."),
    out: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Markdown file to update."),
) -> None:
    """The training-recipe sweep: what each recipe's company adapter answers without retrieval."""
    from loraswarm.bench.recipe import QUICK, RECIPES, markdown, run

    results = run(Settings(), QUICK if quick else RECIPES, seed=seed, out=out, log=console.print)
    console.print(markdown(results))
    console.print(f"written to {out}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.add_typer(adapters_app, name="adapters")
    bench.command("training")(bench_training)
    bench.command("recipe")(bench_recipe)
