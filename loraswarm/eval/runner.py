"""`loraswarm eval` from start to finish: ingest, train what the conditions need, answer, score, report.

Runs on the embedded default, like the demo: the in-process broker, the Weaviate the settings
name (a collection of the eval's own, emptied for the run's tenants first), and the real model
server in a thread of this process. Everything the run writes goes under `--out`.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from loraswarm.eval import conditions, mixed_batch
from loraswarm.eval.conditions import (
    ALL_CONDITIONS,
    CONDITIONS,
    LLAMA_TWINS,
    SPECS,
    Answer,
    ConditionName,
    EvalContext,
)
from loraswarm.eval.questions import EvalQuestion, Kind, read_questions
from loraswarm.eval.sizes import recipe_words
from loraswarm.shared.events import Document
from loraswarm.shared.settings import Settings
from loraswarm.shared.settings.trainer import LORA_ONLY


class EvalError(Exception):
    """Something the user must fix before the benchmark can run; the message says what."""


@dataclass
class EvalConfig:
    corpus: Path
    questions: Path
    out: Path
    conditions: list[ConditionName] = field(default_factory=lambda: list(CONDITIONS))
    steps: int = 80
    seed: int = 0
    concurrency: int = 8
    max_new_tokens: dict[Kind, int] = field(default_factory=lambda: {"fact": 40, "process": 80, "style": 80})
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    min_train_tokens: int = 96
    max_quality_regression: float | None = None  # the gate's bound (None: the trainer's default)
    # False: no adapters are trained; every condition (the swarm's specialists included) answers
    # with the base model. For comparing what does not depend on adapters (e.g. composers) fast.
    train: bool = True
    sizes: dict[str, Any] = field(default_factory=dict)  # how the data was made, for the report


@dataclass
class TrainedAdapter:
    tenant: str
    user: str | None
    adapter_id: str
    published: bool
    seconds: float
    detail: str
    metrics: dict[str, float]
    method: str = "lora"
    nbytes: int = 0  # adapter_model.safetensors as published


@dataclass
class EvalRun:
    config: EvalConfig
    questions: list[EvalQuestion]
    answers: list[Answer]
    adapters: list[TrainedAdapter]
    chunks: int
    timings_s: dict[str, float]
    cold_load_ms: dict[str, float] = field(default_factory=dict)  # adapter id -> the server's first load
    serving: str = ""  # where and in what number format the model server ran, e.g. "cpu, bfloat16"
    mixed_batch: dict[str, Any] = field(default_factory=dict)  # eval/mixed_batch.py, with LLaMA conditions


def eval_settings(config: EvalConfig) -> Settings:
    settings = Settings()
    settings.broker = "memory"
    settings.data_dir = config.out / "state"
    settings.orchestration.tenants_dir = settings.data_dir / "tenant-config"
    # A collection of the eval's own per output folder: a run never reads another's chunks.
    digest = hashlib.sha256(str(config.out.resolve()).encode()).hexdigest()[:10]
    settings.retrieval.collection = f"LoraswarmEval_{digest}"
    settings.tracing.exporter = "none"
    # The tenants' corpora are small (a benchmark should run in minutes on a CPU): the trainer's
    # minimum of 512 training tokens is lowered, and the report says so.
    settings.trainer.min_train_tokens = config.min_train_tokens
    if config.max_quality_regression is not None:
        # sizes.RECIPE_MAX_QUALITY_REGRESSION says why; the report states the bound.
        settings.trainer.max_quality_regression = config.max_quality_regression
    # Many answers are asked at once on a CPU: one generation may queue behind the others.
    settings.orchestration.llm_timeout_s = 600
    # The planner's plan and composed answer are the swarm's longest generations; on a CPU their
    # defaults (256 and 320 tokens) would make the swarm condition most of the run.
    settings.orchestration.plan_max_tokens = 128
    settings.orchestration.compose_max_tokens = 192
    return settings


def check_inputs(config: EvalConfig) -> list[EvalQuestion]:
    from loraswarm.eval.questions import QuestionFileError

    unknown = [c for c in config.conditions if c not in SPECS]
    if unknown:
        raise EvalError(f"unknown condition(s) {unknown}; choose from {', '.join(ALL_CONDITIONS)}")
    try:
        questions = read_questions(config.questions)
    except QuestionFileError as exc:
        raise EvalError(str(exc)) from exc
    for tenant in sorted({q.tenant for q in questions}):
        if not (config.corpus / tenant / "company").is_dir():
            raise EvalError(
                f"{config.corpus}/{tenant}/company is missing: the corpus folder needs "
                "<tenant>/company/** (and <tenant>/users/<user>/** for user questions)"
            )
    for tenant, user in sorted({(q.tenant, q.user) for q in questions if q.user}):
        if not (config.corpus / tenant / "users" / user).is_dir():
            raise EvalError(
                f"{config.corpus}/{tenant}/users/{user} is missing (a question is asked by {user})"
            )
    return questions


def same_id_anywhere(doc: Document, corpus: Path) -> Document:
    """The document named by its path inside the corpus, not on this disk. Ingestion names a file
    by its absolute path, and the trainer's held-out split and retrieval-aware examples are drawn
    by hashes of those names: with the run's `--out` folder in every name, two runs of one seed
    held out different sections and scored apart (medium runs in /tmp/eval-raft4 and
    /tmp/eval-raft8, otherwise the same: adapter + RAG fact accuracy 0.75 and 0.25)."""
    return doc.model_copy(update={"doc_id": Path(doc.doc_id).relative_to(corpus.resolve()).as_posix()})


def ingest(settings: Settings, corpus: Path, tenants: list[str]) -> int:
    """Index each tenant's company and user folders into a fresh shard; the number of chunks."""
    from loraswarm.services.ingestion.files import FileOptions, discover, load_file
    from loraswarm.services.ingestion.pipeline import Indexer
    from loraswarm.shared.retrieval import load_embedder
    from loraswarm.shared.vectorstore import shared_store

    store = shared_store(settings)
    indexer = Indexer(store, load_embedder(settings), settings.retrieval)
    chunks = 0
    for tenant in tenants:
        store.delete_tenant(tenant)  # a rerun starts from exactly the corpus on disk
        folders = [(corpus / tenant / "company", "company")] + [
            (d, f"user:{d.name}") for d in sorted((corpus / tenant / "users").glob("*")) if d.is_dir()
        ]
        for folder, visibility in folders:
            options = FileOptions(
                source="company" if visibility == "company" else "user", visibility=visibility
            )
            docs = [
                same_id_anywhere(d, corpus)
                for d in (load_file(p, options) for p in discover([folder]))
                if isinstance(d, Document)
            ]
            if docs:
                chunks += indexer.index(tenant, docs).chunks
    return chunks


def write_tenant_configs(settings: Settings, questions: list[EvalQuestion]) -> None:
    """One configuration per tenant for the swarm: a company specialist and a personal one."""
    folder = settings.orchestration.tenants_dir
    folder.mkdir(parents=True, exist_ok=True)
    for tenant in sorted({q.tenant for q in questions}):
        config = {
            "tenant_id": tenant,
            "limits": {"deadline_s": 900, "max_specialists": 2, "max_handoffs": 0, "token_budget": 8000},
            "specialists": [
                {
                    "name": "company",
                    "description": "The company's facts, policies, processes and writing rules.",
                    "instructions": f"You answer for the company {tenant} from its documents.",
                    "adapter": "company",
                    "max_new_tokens": 96,
                },
                {
                    "name": "personal",
                    "description": "The asking colleague's own notes, team, checklists and writing preferences.",
                    "instructions": "You answer for the asking colleague from their own notes.",
                    "adapter": "user",
                    "max_new_tokens": 96,
                },
            ],
            "default_plan": [{"specialist": "company"}],
        }
        (folder / f"{tenant}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        # The llama_swarm condition's: the same, users' adapters their LLaMA-Adapters (issue 19).
        llama = conditions.llama_tenants_dir(folder)
        llama.mkdir(parents=True, exist_ok=True)
        config["user_adapter_prefix"] = conditions.LLAMA_USER_PREFIX
        (llama / f"{tenant}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def needed_adapters(
    config: EvalConfig, questions: list[EvalQuestion], recipe: str = "builder"
) -> list[tuple[str, str | None]]:
    """Company adapters first (a user's stacks on its company's), then each asking user's."""
    kinds = {SPECS[c].adapters for c in config.conditions if SPECS[c].recipe == recipe}
    tenants = sorted({q.tenant for q in questions})
    wanted: list[tuple[str, str | None]] = []
    if kinds & {"company", "stack"}:
        wanted += [(t, None) for t in tenants]
    if "stack" in kinds:
        wanted += sorted({(q.tenant, q.user) for q in questions if q.user})
    return wanted


def needed_llama_adapters(config: EvalConfig, questions: list[EvalQuestion]) -> list[tuple[str, str | None]]:
    """The LLaMA-Adapters issue 19's conditions ask for (a user's stacks on its company's LoRA)."""
    kinds = {SPECS[c].adapters for c in config.conditions if SPECS[c].method == "llama_adapter"}
    wanted: list[tuple[str, str | None]] = []
    if "company" in kinds:
        wanted += [(t, None) for t in sorted({q.tenant for q in questions})]
    if "stack" in kinds:
        wanted += sorted({(q.tenant, q.user) for q in questions if q.user})
    return wanted


def train(
    settings: Settings,
    config: EvalConfig,
    wanted: list[tuple[str, str | None]],
    on_done: Callable[[TrainedAdapter], None],
    recipe: str = "builder",
    method: str = "lora",
) -> list[TrainedAdapter]:
    """`recipe="raw"`: the training-set builder off (raw text only), adapters named `raw-...`."""
    from loraswarm.services.trainer.pipeline import Published, Trainer
    from loraswarm.shared.events import AdapterTrainRequested

    prefix = "raw-" if recipe == "raw" else ""
    if recipe == "raw":
        settings = settings.model_copy(deep=True)
        settings.trainer.builder.enabled = False
    trainer = Trainer(settings)
    # Canaries off: the leakage gate is the trainer's own test (tests/trainer); here every
    # training token should be the tenant's data, so the comparison with RAG is fair.
    hp = {"steps": config.steps, "canaries": 0, "seed": config.seed, **config.hyperparameters}
    if method == "llama_adapter":
        # The size's LoRA recipe (rank, layers, LoRA's learning rate) is not LLaMA-Adapter's: it
        # trains at its own default rate on the same data, steps and batches.
        hp = {k: v for k, v in hp.items() if k not in LORA_ONLY and k != "learning_rate"}
    if recipe == "raw":
        hp["stack_on"] = "raw-company"
    done = []
    for tenant, user in wanted:
        name = prefix + (f"user-{user}" if user else "company")
        if method == "llama_adapter":
            name = f"{conditions.LLAMA_USER_PREFIX}{user}" if user else "company-llama"
        started = time.perf_counter()
        outcome = trainer.run(
            AdapterTrainRequested(
                tenant_id=tenant,
                user_id=user,
                name=name,
                method="llama_adapter" if method == "llama_adapter" else "lora",
                hyperparameters=hp,
            )
        )
        seconds = time.perf_counter() - started
        if isinstance(outcome, Published):
            item = TrainedAdapter(tenant, user, outcome.adapter_id, True, seconds, f"@{outcome.version}", outcome.metrics, method, _size(outcome.uri))  # fmt: skip
        else:
            item = TrainedAdapter(tenant, user, outcome.adapter_id, False, seconds, f"{outcome.code}: {outcome.reason}", outcome.metrics, method)  # fmt: skip
        on_done(item)
        done.append(item)
    return done


def _size(uri: str) -> int:
    weights = Path(uri) / "adapter_model.safetensors"
    return weights.stat().st_size if weights.is_file() else 0


def _cold_loads(url: str) -> dict[str, float]:
    """What the model server measured loading each adapter the first time (`/admin/adapters`)."""
    import httpx

    try:
        resident = httpx.get(f"{url}/admin/adapters", timeout=30).json().get("resident", [])
        return {str(a["adapter_id"]).split("@")[0]: float(a["load_ms"]) for a in resident}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):  # a cost figure missing, not a lost run
        return {}


async def answer_all(
    ctx: EvalContext, config: EvalConfig, questions: list[EvalQuestion], console: Console
) -> tuple[list[Answer], dict[str, float]]:
    answers: list[Answer] = []
    seconds: dict[str, float] = {}
    for name in config.conditions:
        started = time.perf_counter()
        count = 0

        def tick() -> None:
            nonlocal count
            count += 1

        # Looked up on the module at call time, one condition after another: a test can watch
        # which requests each condition makes.
        got = await conditions.run_condition(name, questions, ctx, tick)
        seconds[name] = time.perf_counter() - started
        failed = sum(a.error is not None for a in got)
        console.print(
            f"  {SPECS[name].label}: {len(got)} answers in {seconds[name]:.0f} s"
            + (f" ([yellow]{failed} failed[/yellow])" if failed else "")
        )
        answers += got
    return answers, seconds


def run_eval(config: EvalConfig, console: Console) -> EvalRun:
    from loraswarm.demo import check_model, model_server

    started = time.monotonic()
    questions = check_inputs(config)
    settings = eval_settings(config)
    check_model(settings)
    shutil.rmtree(settings.data_dir, ignore_errors=True)  # adapters and state of an earlier run
    settings.data_dir.mkdir(parents=True)
    timings: dict[str, float] = {}
    tenants = sorted({q.tenant for q in questions})

    t0 = time.monotonic()
    chunks = ingest(settings, config.corpus, tenants)
    timings["ingest"] = time.monotonic() - t0
    console.print(f"indexed {chunks} chunks of {len(tenants)} tenant(s) into {settings.retrieval.collection}")
    write_tenant_configs(settings, questions)

    t0 = time.monotonic()
    wanted = needed_adapters(config, questions) if config.train else []

    def trained(item: TrainedAdapter) -> None:
        state = "published" if item.published else "[red]rejected[/red]"
        console.print(f"  adapter {item.adapter_id} {state} {item.detail} ({item.seconds:.0f} s)")

    how = recipe_words({"steps": config.steps, **config.hyperparameters})
    console.print(f"training {len(wanted)} adapter(s), {how} ...")
    adapters = train(settings, config, wanted, trained)
    llama_wanted = needed_llama_adapters(config, questions) if config.train else []
    if llama_wanted:
        console.print(f"training {len(llama_wanted)} LLaMA-Adapter(s), {how} ...")
        adapters += train(settings, config, llama_wanted, trained, method="llama_adapter")
    timings["train"] = time.monotonic() - t0
    published = {(a.tenant, a.user): a.adapter_id for a in adapters if a.published and a.method == "lora"}
    llama = {(a.tenant, a.user): a.adapter_id for a in adapters if a.published and a.method != "lora"}
    raw_wanted = needed_adapters(config, questions, "raw") if config.train else []
    if raw_wanted:
        t0 = time.monotonic()
        console.print(f"training {len(raw_wanted)} raw-text adapter(s) (the builder off), {how} ...")
        raw = train(settings, config, raw_wanted, trained, recipe="raw")
        timings["train_raw"] = time.monotonic() - t0
        adapters += raw
    raw_published = {
        (a.tenant, a.user): a.adapter_id for a in adapters if a.published and "/raw-" in a.adapter_id
    }

    t0 = time.monotonic()
    with model_server(settings) as url:
        settings.orchestration.tgi_url = url
        settings.orchestration.primary_llm_base_url = f"{url}/v1"
        ctx = EvalContext(
            settings,
            url,
            published,
            dict(config.max_new_tokens),
            config.concurrency,
            raw_adapters=raw_published,
            llama_adapters=llama,
        )
        console.print(
            f"answering {len(questions)} questions under {len(config.conditions)} condition(s) "
            f"({config.concurrency} at a time) ..."
        )
        answers, per_condition = asyncio.run(answer_all(ctx, config, questions, console))
        cold = _cold_loads(url)
        mixed: dict[str, Any] = {}
        if any(c in LLAMA_TWINS for c in config.conditions):
            t1 = time.monotonic()
            console.print("serving LoRA and LLaMA-Adapter rows in mixed batches ...")
            mixed = asyncio.run(mixed_batch.measure(ctx, questions))
            timings["mixed_batch"] = time.monotonic() - t1
    timings["answer"] = time.monotonic() - t0
    timings |= {f"answer:{k}": v for k, v in per_condition.items()}
    _drop_collection(settings, tenants)
    timings["total"] = time.monotonic() - started
    from loraswarm.shared.models import serving_device

    served = serving_device(settings)  # what the model server picked, by the same function
    serving = f"{served.name}, {str(served.dtype).removeprefix('torch.')}"
    return EvalRun(config, questions, answers, adapters, chunks, timings, cold, serving, mixed)


def _drop_collection(settings: Settings, tenants: list[str]) -> None:
    """The eval's shards go when it ends: the results are in the report, the data on disk."""
    from loraswarm.shared.vectorstore import shared_store

    store = shared_store(settings)
    for tenant in tenants:
        store.delete_tenant(tenant)
