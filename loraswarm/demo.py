"""`loraswarm demo`: the main job on the embedded default, start to finish, in one process.

In-process broker, embedded Weaviate on the locally built binary, the model server in-process:
ingest the example tenants, train (or reuse) each company's and each user's adapter, ask one
question per tenant and per user through the whole swarm, and print every recommendation with
its citations, the specialists and adapters that took part, timings and the trace waterfall.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import statistics
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from loraswarm.shared import answer_checks as checks
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import (
    AdapterTrainRequested,
    RecommendationCompleted,
    RecommendationFailed,
    RecommendationRequested,
)
from loraswarm.shared.ports import free_port
from loraswarm.shared.settings import Settings
from loraswarm.shared.settings.paths import default_home
from loraswarm.shared.tenants import load_tenant_file

if TYPE_CHECKING:
    from loraswarm.services.model_server.engine import EngineStats


class DemoError(Exception):
    """Something the user must fix before the demo can run; the message says what."""


@dataclass(frozen=True)
class Question:
    tenant_id: str
    user_id: str | None
    text: str


def demo_settings(examples: Path, data_dir: Path | None) -> Settings:
    settings = Settings()
    settings.broker = "memory"
    settings.data_dir = data_dir or default_home() / "demo"
    settings.orchestration.tenants_dir = examples / "tenants"
    settings.retrieval.weaviate.mode = "embedded"
    settings.tracing.exporter = "file"
    settings.tracing.file = settings.data_dir / "traces.jsonl"
    # The example tenants are small on purpose (a demo should run in minutes): the trainer's
    # minimum is lowered from 512 to 96 training tokens, and the demo says so.
    settings.trainer.min_train_tokens = 96
    # 20 steps (the demo's default) at LoRA's usual 5e-4 leave a scope's own canaries unrecalled
    # (acme's 2.72 bits, ana's 1.01, against the owner check's bound of 2.89), so the gate refused
    # every adapter as unmeasurable. The short recipe: 2 warm-up steps and LoRA at 2e-3
    # (DEMO_LEARNING_RATES). With each scope's style documents kept in training (dataset.py,
    # `style_units`), all nine demo adapters pass the gate with this recipe: held-out loss
    # 0.87-0.99 of where it started, the two LLaMA-Adapters' own canaries at 4.0-4.4 bits; before
    # that, four were refused, each measured on its one tone or templates document alone.
    settings.trainer.defaults.warmup_steps = 2
    # Every question is asked at once on a CPU: one generation may queue behind the others.
    settings.orchestration.llm_timeout_s = 150
    return settings


def check_examples(examples: Path) -> list[Question]:
    questions_file = examples / "questions.yaml"
    try:
        raw = yaml.safe_load(questions_file.read_text())
    except OSError as exc:
        raise DemoError(
            f"cannot read the examples folder {examples} ({exc.strerror}); run the demo from the "
            "repository root or pass --examples PATH."
        ) from exc
    questions = [
        Question(tenant, item.get("user"), item["question"])
        for tenant, items in raw.items()
        for item in items
    ]
    for q in questions:
        if not (examples / "tenants" / f"{q.tenant_id}.yaml").is_file():
            raise DemoError(
                f"{examples}/tenants/{q.tenant_id}.yaml is missing; the examples folder is incomplete."
            )
    return questions


def check_model(settings: Settings) -> None:
    from loraswarm.shared import models

    if not models.is_pulled(settings):
        raise DemoError(
            f"the base model is not in {settings.model_cache}; run `loraswarm models pull` first."
        )


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def ingest(settings: Settings, examples: Path, console: Console) -> int:
    """Index every example document, company-wide or private to its user (idempotent). Each example
    tenant's shard then holds exactly this checkout's files: a document's id is its path, so another
    checkout's copies are deleted (left, every passage came twice and was cited twice)."""
    from loraswarm.services.ingestion.files import FileOptions, discover, load_file
    from loraswarm.services.ingestion.pipeline import Indexer
    from loraswarm.shared.events import Document
    from loraswarm.shared.retrieval import load_embedder
    from loraswarm.shared.secrets import DocumentSecrets
    from loraswarm.shared.vectorstore import shared_store

    secrets = DocumentSecrets.under(settings.data_dir)
    store = shared_store(settings)
    indexer = Indexer(store, load_embedder(settings), settings.retrieval, secrets=secrets)
    jobs: list[tuple[str, Path, str]] = []
    indexed: dict[str, list[str]] = {}
    for tenant_dir in sorted(p for p in examples.iterdir() if (p / "company").is_dir()):
        jobs.append((tenant_dir.name, tenant_dir / "company", "company"))
        for user_dir in sorted((tenant_dir / "users").glob("*")):
            jobs.append((tenant_dir.name, user_dir, f"user:{user_dir.name}"))
    chunks = 0
    with _progress(console) as progress:
        task = progress.add_task("ingesting the example tenants", total=len(jobs))
        for tenant, folder, visibility in jobs:
            options = FileOptions(
                source="handbook" if visibility == "company" else "notes", visibility=visibility
            )
            docs = [d for d in (load_file(p, options) for p in discover([folder])) if isinstance(d, Document)]
            chunks += indexer.index(tenant, docs).chunks
            indexed.setdefault(tenant, []).extend(d.doc_id for d in docs)
            progress.advance(task)
    for tenant, doc_ids in indexed.items():
        store.delete_except(tenant, doc_ids)
    return chunks


# The demo's learning rate per method (see demo_settings); a method not named trains at its own
# default (LLaMA-Adapter: 7e-3, shared/settings/trainer.py).
DEMO_LEARNING_RATES: dict[str, float] = {"lora": 2e-3}


def train_request_id(
    examples: Path,
    tenant: str,
    name: str,
    steps: int,
    method: str = "lora",
    learning_rate: float | None = None,
    revision: int | None = None,
) -> uuid.UUID:
    """One id per (adapter, steps, method, learning rate, the tenant's example files, the trainer's
    data revision): a rerun on unchanged data is the same request, which the trainer recognises as
    already published or refused."""
    from loraswarm.services.trainer.dataset import DATA_REVISION

    revision = DATA_REVISION if revision is None else revision
    digest = hashlib.sha256()
    for path in sorted((examples / tenant).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(examples)).encode() + b"\0" + path.read_bytes() + b"\0")
    # LoRA's ids are those from before the method was configurable, so earlier runs are reused;
    # a new data revision (the trainer's split changed) is a new request.
    also = (
        ("" if method == "lora" else f":{method}")
        + ("" if learning_rate is None else f":lr={learning_rate:g}")
        + ("" if revision == 1 else f":data={revision}")
    )
    return uuid.uuid5(
        uuid.NAMESPACE_URL, f"loraswarm-demo:{tenant}/{name}:{steps}:{digest.hexdigest()}{also}"
    )


def train(
    settings: Settings,
    examples: Path,
    questions: list[Question],
    steps: int,
    console: Console,
    *,
    retrain: bool = False,
    learning_rates: Mapping[str, float] = DEMO_LEARNING_RATES,
) -> list[str]:
    """Train each company's and user's adapter, or reuse the one already published (or the verdict
    that refused it) for the same data; `retrain` trains every one again."""
    from loraswarm.services.trainer.pipeline import Published, Trainer

    trainer = Trainer(settings)
    # Each company's adapter first (a user's may stack on it), then each user's.
    wanted = sorted(
        {(q.tenant_id, "") for q in questions} | {(q.tenant_id, q.user_id or "") for q in questions}
    )
    lines = []
    with _progress(console) as progress:
        for tenant, user_or_empty in wanted:
            user = user_or_empty or None
            name = f"user-{user}" if user else "company"
            task = progress.add_task(f"adapter {tenant}/{name}", total=steps)

            def sink(phase: str, step: int, total: int, loss: float | None, task: TaskID = task) -> None:
                if phase == "training":
                    progress.update(task, completed=step, total=total)

            # The tenant configuration chooses the method (initech's users: LLaMA-Adapter).
            method = load_tenant_file(examples / "tenants" / f"{tenant}.yaml").adapter_method(user)
            rate = learning_rates.get(method)
            request = AdapterTrainRequested(
                event_id=train_request_id(examples, tenant, name, steps, method, rate),
                tenant_id=tenant,
                user_id=user,
                name=name,
                method=method,
                hyperparameters={"steps": steps} | ({} if rate is None else {"learning_rate": rate}),
            )
            # The same request on the same data was published, or refused, by an earlier run: the
            # trainer answers with that outcome instead of training again (~2 min an adapter).
            before = None if retrain else trainer.decided(request)
            # Looked up just above: `run` need not look again.
            outcome = before or trainer.run(request, progress=sink, again=True)
            progress.update(task, completed=steps, total=steps)
            if isinstance(outcome, Published):
                done = "reused (same data and steps as before)" if before else "published"
                lines.append(f"{outcome.adapter_id}@{outcome.version} {done}")
            else:
                again = " (refused before, same data and steps)" if before else ""
                lines.append(f"{outcome.adapter_id} rejected ({outcome.code}): {outcome.reason}{again}")
    return lines


@contextlib.contextmanager
def model_server(settings: Settings, stats: list[EngineStats] | None = None) -> Iterator[str]:
    """The model server (TGI and OpenAI routes) in this process, on a free port; its batching
    engine's counters are appended to `stats` when it stops."""
    import uvicorn

    from loraswarm.services.model_server.api import create_app
    from loraswarm.services.model_server.server import ModelServer

    server = ModelServer.load(settings)
    server.start()
    port = free_port()
    http = uvicorn.Server(
        uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=http.run, name="model-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not http.started:
        if time.monotonic() > deadline:
            raise DemoError("the model server did not start within 60 s")
        time.sleep(0.05)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
            pass
        yield f"http://127.0.0.1:{port}"
    finally:
        http.should_exit = True
        thread.join(timeout=30)
        if stats is not None:
            stats.append(server.engine.stats)
        server.stop()


@contextlib.asynccontextmanager
async def swarm(settings: Settings) -> AsyncIterator[EventBus]:
    """Retriever, planner and specialists on the in-process broker; yields the client's bus."""
    from loraswarm.services.planner.app import running as planner_running
    from loraswarm.services.retriever.app import build as build_retriever
    from loraswarm.services.specialist.app import build as build_specialist
    from loraswarm.shared.retrieval import retriever

    client = EventBus(settings, service="demo-client")
    async with (
        planner_running(settings),
        build_specialist(settings),
        build_retriever(settings, retriever(settings)),
    ):
        yield client


async def ask_all(
    settings: Settings, questions: list[Question]
) -> dict[str, RecommendationCompleted | RecommendationFailed]:
    outcomes: dict[str, RecommendationCompleted | RecommendationFailed] = {}
    all_in = asyncio.Event()

    async with swarm(settings) as client:

        @client.consumer(RecommendationCompleted, group="demo-client")
        async def completed(event: RecommendationCompleted) -> None:
            outcomes[str(event.request_id)] = event
            if len(outcomes) == len(questions):
                all_in.set()

        @client.consumer(RecommendationFailed, group="demo-client-failed")
        async def failed(event: RecommendationFailed) -> None:
            outcomes[str(event.request_id)] = event
            if len(outcomes) == len(questions):
                all_in.set()

        async with client:
            requests = [
                RecommendationRequested(
                    tenant_id=q.tenant_id, user_id=q.user_id, question=q.text, deadline_s=170
                )
                for q in questions
            ]
            for request in requests:
                await client.publish(request)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), timeout=200)
    return {str(r.request_id): outcomes.get(str(r.request_id)) for r in requests}  # type: ignore[misc]


def _who(question: Question) -> str:
    return f"{question.tenant_id}" + (f" / {question.user_id}" if question.user_id else " (company)")


def _trace_id(settings: Settings, outcome: RecommendationCompleted | RecommendationFailed) -> str:
    from loraswarm.cli.commands.trace import spans_from_file

    try:
        spans = spans_from_file(settings.tracing.file, str(outcome.request_id))
    except Exception:  # the trace is a bonus; the answer is the point
        return "-"
    return spans[0].trace_id if spans else "-"


def show(
    console: Console,
    settings: Settings,
    question: Question,
    outcome: RecommendationCompleted | RecommendationFailed | None,
    *,
    full: bool,
) -> None:
    """One answer: in full (panel, specialists, the trace waterfall), or as a few compact lines."""
    from loraswarm.cli.commands.trace import render_waterfall, spans_from_file

    who = _who(question)
    if outcome is None:
        console.print(f"[red]{who}: no answer in time[/red] — {question.text}")
        return
    if isinstance(outcome, RecommendationFailed):
        console.print(f"[red]{who}: failed ({outcome.code})[/red]: {outcome.reason}")
        return
    total_s = outcome.timings_ms.get("total", 0.0) / 1000
    if not full:
        trace = _trace_id(settings, outcome)
        console.print(
            f"[bold]{who}[/bold] {total_s:.1f} s, trace {trace}\n  Q: {question.text}", highlight=False
        )
        for rec in outcome.recommendations:
            cites = ", ".join(f"{c.doc_id}#{c.position}" for c in rec.citations) or rec.rationale or "-"
            text = " ".join(rec.text.split())
            console.print(f"  A: {text}\n  [dim]cites: {cites}[/dim]", highlight=False)
        return
    body = [f"[bold]Q:[/bold] {question.text}"]
    if outcome.summary:
        body.append(f"[bold]Summary:[/bold] {outcome.summary}")
    for i, rec in enumerate(outcome.recommendations, 1):
        cites = "; ".join(f"{c.title or c.doc_id} ({c.source}#{c.position})" for c in rec.citations)
        body.append(
            f"[bold]{i}. {rec.title}[/bold]\n   {rec.text}\n   [dim]cites: {cites or rec.rationale or '-'}[/dim]"
        )
    table = Table("specialist", "adapters", "tokens in/out", "ms", box=None)
    for c in outcome.contributions:
        table.add_row(
            c.specialist,
            " + ".join(c.adapter_ids) or "base",
            f"{c.usage.input_tokens}/{c.usage.output_tokens}",
            f"{c.duration_ms:.0f}",
        )
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in outcome.timings_ms.items())
    notes = ("\n[yellow]notes:[/yellow] " + "; ".join(outcome.notes)) if outcome.notes else ""
    partial = " [yellow](partial)[/yellow]" if outcome.partial else ""
    console.print(Panel("\n".join(body) + f"\n[dim]timings: {timings}[/dim]{notes}", title=who + partial))
    console.print(table)
    try:
        spans = spans_from_file(settings.tracing.file, str(outcome.request_id))
        for line in render_waterfall(spans)[:25]:
            console.print(line, highlight=False)
    except Exception as exc:  # the trace is a bonus; the answer is the point
        console.print(f"[dim](no trace: {exc})[/dim]")


def answer_checks(
    questions: Sequence[Question], outcomes: Sequence[RecommendationCompleted | RecommendationFailed | None]
) -> tuple[checks.Rates, int]:
    """The answer scorer over the demo's answers, and how many state a fact of a passage they cite."""
    done = [
        (q, o) for q, o in zip(questions, outcomes, strict=True) if isinstance(o, RecommendationCompleted)
    ]
    results = []
    grounded = 0
    for question, outcome in done:
        text = "\n".join(r.text for r in outcome.recommendations)
        texts = {(p.citation.doc_id, p.citation.position): p.text for p in outcome.passages}
        keys = dict.fromkeys((c.doc_id, c.position) for r in outcome.recommendations for c in r.citations)
        cited = [texts.get(k, "") for k in keys]
        result = checks.check(text, question.text, [p.text for p in outcome.passages], cited)
        grounded += result.cited_supporting > 0
        results.append(result)
    return checks.rates(results), grounded


def run_demo(
    examples: Path, data_dir: Path | None, steps: int, console: Console, *, retrain: bool = False
) -> None:
    from loraswarm.shared.tracing import configure_tracing
    from loraswarm.shared.vectorstore import close_shared

    started = time.monotonic()
    questions = check_examples(examples)
    settings = demo_settings(examples.resolve(), data_dir)
    check_model(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.tracing.file.unlink(missing_ok=True)
    provider = configure_tracing("loraswarm", settings.tracing)
    console.rule(
        "loraswarm demo: embedded default (in-process broker, embedded Weaviate, in-process model server)"
    )
    chunks = ingest(settings, examples, console)
    console.print(f"indexed {chunks} chunks for {len({q.tenant_id for q in questions})} tenants")
    console.print(
        f"training on the small example data: min_train_tokens lowered to {settings.trainer.min_train_tokens}"
    )
    if steps > 0:
        for line in train(settings, examples, questions, steps, console, retrain=retrain):
            console.print(line)
    else:
        console.print("no training (--steps 0): the specialists answer with the base model")
    engine: list[EngineStats] = []
    with model_server(settings, engine) as url:
        settings.orchestration.tgi_url = url
        settings.orchestration.primary_llm_base_url = f"{url}/v1"
        console.print(f"model server on {url}; asking {len(questions)} questions through the swarm ...")
        asked = time.monotonic()
        outcomes = asyncio.run(ask_all(settings, questions))
        answered_s = time.monotonic() - asked
    provider.force_flush()
    close_shared()
    answers = list(outcomes.values())
    for i, (question, outcome) in enumerate(zip(questions, answers, strict=True)):
        show(console, settings, question, outcome, full=i == 0)
    done = sum(isinstance(o, RecommendationCompleted) for o in answers)
    latencies = sorted(
        o.timings_ms["total"] / 1000
        for o in answers
        if isinstance(o, RecommendationCompleted) and "total" in o.timings_ms
    )
    rates, grounded = answer_checks(questions, answers)
    console.print(
        f"answers: {rates.answers}; echo the question: {rates.echo_rate or 0:.0%}; repeat a sentence: "
        f"{rates.repeat_rate or 0:.0%}; cite a passage stating their fact: {grounded}/{rates.answers}; "
        "citation precision: "
        + ("-" if rates.citation_precision is None else f"{rates.citation_precision:.2f}")
    )
    if latencies:
        console.print(
            f"request latency: p50 {statistics.median(latencies):.1f} s, max {latencies[-1]:.1f} s "
            f"({len(latencies)} requests at once)"
        )
    for stats in engine:
        console.print(
            f"model server: {stats.tokens} tokens generated, {stats.steps} decode steps "
            f"(mean batch {stats.tokens / max(stats.steps, 1):.1f}), {stats.prefills} prefills; "
            f"decoding {stats.step_seconds:.0f} s, prefilling {stats.prefill_seconds:.0f} s "
            f"({stats.prompt_tokens} prompt tokens, {stats.prefill_padding} of padding)"
        )
    console.rule(
        f"{done}/{len(questions)} recommendations in {answered_s:.0f} s of asking; whole demo {time.monotonic() - started:.0f} s"
    )
