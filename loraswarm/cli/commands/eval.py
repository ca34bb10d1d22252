"""`loraswarm eval`: the personalization benchmark (adapters vs RAG vs the swarm, per tenant)."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer
from rich.console import Console

console = Console()


def eval_command(
    size_name: str = typer.Option(
        "full",
        "--size",
        help="quick (1 tenant, 7 questions, 4-step adapters), medium (1 tenant with 2 users, 36 questions, "
        "the full size's adapters: 4 epochs of the recipe `bench recipe` chose) or full (3 tenants with 2 "
        "users each, 150 questions).",
    ),
    quick: bool = typer.Option(False, "--quick", help="The same as --size quick."),
    corpus: Path | None = typer.Option(
        None,
        "--corpus",
        help="Corpus folder: <tenant>/company/** and <tenant>/users/<user>/** (default: generated).",
    ),
    questions: Path | None = typer.Option(
        None, "--questions", help="Question file, JSONL (see README); needs --corpus (default: generated)."
    ),
    conditions: str = typer.Option(
        "base,rag,company,company_user,adapter_rag,swarm,raw_company_user,raw_adapter_rag",
        "--conditions",
        help="Comma-separated: base, rag, company, company_user, adapter_rag, swarm, swarm_legacy "
        "(the swarm with the composer before issue 14), raw_company_user, raw_adapter_rag (adapters "
        "trained on raw text, the recipe before the training-set builder).",
    ),
    out: Path = typer.Option(
        Path("eval-out"), "--out", help="Where report.md, report.json, chart.png and the run's state go."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated data, training and bootstrap."),
    steps: int | None = typer.Option(
        None,
        "--steps",
        min=1,
        help="Training steps per adapter, the most where the size trains by epochs (default: by size).",
    ),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Answers requested at a time."),
    train: bool = typer.Option(
        True,
        "--train/--no-train",
        help="--no-train: no adapters; every condition, the swarm's specialists included, uses the base model "
        "(for comparing composers, which do not depend on adapters).",
    ),
    benchmarks: Path | None = typer.Option(
        None,
        "--benchmarks",
        help="Also write the sections of this BENCHMARKS.md the run can fill: `personalization` (chart next to "
        "it) when it has rag and adapter_rag, `llama_adapter` when it has LLaMA-Adapter conditions.",
    ),
) -> None:
    """Ingest, train the adapters the conditions need, answer every question under each condition, score, report."""
    from loraswarm.demo import DemoError
    from loraswarm.eval.corpus import generate
    from loraswarm.eval.publish import PERSONALIZATION_NEEDS, publish_section
    from loraswarm.eval.report import markdown, write
    from loraswarm.eval.runner import EvalConfig, EvalError, run_eval
    from loraswarm.eval.sizes import SIZES
    from loraswarm.shared.vectorstore import VectorStoreUnavailable

    size_name = "quick" if quick else size_name
    if size_name not in SIZES:
        console.print(f"[red]--size must be one of {', '.join(SIZES)}, not {size_name!r}[/red]")
        raise typer.Exit(2)
    size = SIZES[size_name]
    if (corpus is None) != (questions is None):
        console.print("[red]--corpus and --questions go together (or leave both out to generate data)[/red]")
        raise typer.Exit(2)
    generated: dict[str, object] = {}
    if corpus is None or questions is None:
        corpus, questions = out / "data" / "corpus", out / "data" / "questions.jsonl"
        shutil.rmtree(out / "data", ignore_errors=True)
        generate(
            seed=seed, tenants=size.tenants, users_per_tenant=size.users_per_tenant, per_kind=size.per_kind
        ).write(corpus, questions)
        generated = {
            "generated": True,
            "per_kind_per_tenant": size.per_kind,
            "users_per_tenant": size.users_per_tenant,
        }
        console.print(f"generated the data (seed {seed}) into {out / 'data'}")
    config = EvalConfig(
        corpus=corpus,
        questions=questions,
        out=out,
        conditions=[c.strip() for c in conditions.split(",") if c.strip()],  # type: ignore[misc]
        steps=steps or size.steps,
        seed=seed,
        concurrency=concurrency,
        max_new_tokens=dict(size.max_new_tokens),
        hyperparameters=dict(size.hyperparameters),
        min_train_tokens=size.min_train_tokens,
        max_quality_regression=size.max_quality_regression,
        train=train,
        sizes=generated | {"size": size_name},
    )
    try:
        run = run_eval(config, console)
    except (EvalError, DemoError, VectorStoreUnavailable) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    report = write(run, out)
    console.print(markdown(report, chart=None))
    console.print(
        f"written {out / 'report.md'}, {out / 'report.json'}, {out / 'chart.png'} ({run.timings_s['total']:.0f} s)"
    )
    if benchmarks is not None:
        if written := publish_section(report, out / "chart.png", benchmarks):
            console.print(f"written the {written} section of {benchmarks}")
        else:
            console.print(
                "the personalization section is left as it is: it compares "
                + " and ".join(sorted(PERSONALIZATION_NEEDS))
                + ", and this run did not have both"
            )
        from loraswarm.eval import llama_adapter

        if llama_adapter.publish(report, benchmarks):
            console.print(f"written the llama_adapter section of {benchmarks}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("eval")(eval_command)
