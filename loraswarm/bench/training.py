"""`loraswarm bench training`: the trainer's loop against a bare peft loop, and one whole job.

1. Throughput: the trainer's step (`AdapterTraining.step`: schedule, clipping, NaN checks, a
   progress callback) and a bare peft step (forward, backward, AdamW, nothing else) train two
   copies of the model on the very same batches, stepping in turn with the order swapped every
   step, so load from anything else on the machine falls on both alike. tokens/s of each and
   their ratio (trainer / bare; the goal is ≥ 0.9) are reported.
2. One job end to end on the default model: `Trainer.run` on a tenant's examples (gather, train,
   evaluate held-out loss and leakage, publish), timed by phase.
3. The training-set builder's cost on the demo's tenants (examples/): examples built per second
   (every company and user scope, chunked by ingestion's own parser), and seconds per training
   step on the builder's mix against raw-text training (today's recipe before the builder), the
   two stepping in turn on the same scopes' data.
4. bf16 against fp32 training (`precision`): the trainer's step in each, in turn on the same
   batches (tokens/s), and the job of 2. trained in each (held-out loss, canary exposure).

The text is the documentation of Python's standard library, so every machine has the same data.
"""

from __future__ import annotations

import importlib
import inspect
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from loraswarm.bench.machine import describe
from loraswarm.bench.report import write_section
from loraswarm.shared.settings import Settings

_MODULES = (
    "json", "collections", "asyncio", "pathlib", "itertools", "functools", "argparse", "logging",
    "datetime", "decimal", "fractions", "statistics", "textwrap", "difflib", "heapq", "bisect",
    "contextlib", "dataclasses", "typing", "enum", "csv", "sqlite3", "unittest", "zipfile",
)  # fmt: skip


@dataclass
class Results:
    device: str
    steps: int
    batch_size: int
    seq_len: int
    tokens: int = 0  # of all timed steps; the same for both loops
    bare_step_s: list[float] = field(default_factory=list)
    trainer_step_s: list[float] = field(default_factory=list)
    job: dict[str, float] = field(default_factory=dict)
    job_outcome: str = ""
    builder: dict[str, float] = field(default_factory=dict)
    native_bf16: bool = False
    fp32_step_s: list[float] = field(default_factory=list)  # 4.: the trainer's step in each precision
    bf16_step_s: list[float] = field(default_factory=list)
    job_bf16: dict[str, float] = field(default_factory=dict)
    job_bf16_outcome: str = ""

    @property
    def bare_tokens_per_s(self) -> float:
        return self.tokens / sum(self.bare_step_s)

    @property
    def trainer_tokens_per_s(self) -> float:
        return self.tokens / sum(self.trainer_step_s)

    @property
    def ratio(self) -> float:
        return self.trainer_tokens_per_s / self.bare_tokens_per_s

    @property
    def median_step_ratio(self) -> float:
        """Median over steps of bare time / trainer time (robust to a burst of load on one step)."""
        return statistics.median(b / t for b, t in zip(self.bare_step_s, self.trainer_step_s, strict=True))


def corpus_texts() -> list[tuple[str, str]]:
    """(module, documentation) of standard-library modules: the same text everywhere."""
    texts = []
    for name in _MODULES:
        doc = inspect.getdoc(importlib.import_module(name))
        if doc:
            texts.append((name, doc))
    return texts


def _batches(tokenizer: Any, hp: Any, steps: int) -> list[Any]:
    from loraswarm.services.trainer.corpus import CorpusChunk
    from loraswarm.services.trainer.dataset import document_units, training_batches

    chunks = [CorpusChunk(name, 0, "v", "company", text) for name, text in corpus_texts()]
    samples = [s for u in document_units(chunks, tokenizer, hp.seq_len) for s in u.samples]
    return list(islice(training_batches(samples, hp.batch_size, tokenizer.pad_token_id, hp.seed), steps))


def _bare_peft_step(base: Any, hp: Any, device: str) -> Callable[[Any], None]:
    """What anyone would write with peft: forward, backward, AdamW step; no schedule, no checks."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(hp.seed)
    config = LoraConfig(
        r=hp.r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=list(hp.target_modules),
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )
    model = get_peft_model(base, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp.rate)
    model.train()

    def step(batch: Any) -> None:
        b = batch.to(device)
        out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _trainer_step(base: Any, hp: Any, device: str) -> Callable[[Any], float]:
    """The trainer's own step, with a progress callback like the service's."""
    from loraswarm.services.trainer.loop import AdapterTraining
    from loraswarm.services.trainer.methods import attach

    sent: list[float] = []

    def progress(step: int, total: int, loss: float) -> None:
        if step % 10 == 0 or step == total:
            sent.append(loss)

    return AdapterTraining(attach(base, "lora", hp), hp, device=device, on_step=progress).step


def in_turn(
    steps: tuple[Callable[[Any], Any], Callable[[Any], Any]],
    batches: list[Any],
    times: tuple[list[float], list[float]],
) -> int:
    """Two steppers through the same batches, order swapped every step so that load from anything
    else falls on both alike; the first batch is an untimed warm-up. Returns the timed tokens."""
    for step in steps:
        step(batches[0])
    tokens = 0
    for i, batch in enumerate(batches[1:]):
        order = list(zip(steps, times, strict=True))
        for step, spent in order if i % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            step(batch)
            spent.append(time.perf_counter() - started)
        tokens += batch.tokens
    return tokens


def interleaved(base: Any, batches: list[Any], hp: Any, device: str, results: Results) -> None:
    """The bare loop and the trainer's (both fp32: this compares loops, not arithmetic)."""
    fp32 = hp.model_copy(update={"precision": "fp32"})
    bare, trainer = _bare_peft_step(base.fresh(), fp32, device), _trainer_step(base.fresh(), fp32, device)
    results.tokens = in_turn((bare, trainer), batches, (results.bare_step_s, results.trainer_step_s))


def precisions(base: Any, batches: list[Any], hp: Any, device: str, results: Results) -> None:
    """The trainer's step in fp32 and in bf16 (autocast), in turn on the same batches."""
    fp32, bf16 = (hp.model_copy(update={"precision": p}) for p in ("fp32", "bf16"))
    steps = (_trainer_step(base.fresh(), fp32, device), _trainer_step(base.fresh(), bf16, device))
    in_turn(steps, batches, (results.fp32_step_s, results.bf16_step_s))


def _examples_file(folder: Path) -> str:
    """Chat pairs about the standard library, in the tenant's own folder."""
    lines = []
    for name, doc in corpus_texts():
        paragraphs = [p.strip() for p in doc.split("\n\n") if p.strip()]
        for i, paragraph in enumerate(paragraphs[:6]):
            question = f"What does the Python module {name} say{' next' if i else ''}?"
            lines.append(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": question},
                            {"role": "assistant", "content": paragraph[:600]},
                        ]
                    }
                )
            )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stdlib.jsonl").write_text("\n".join(lines) + "\n")
    return "stdlib.jsonl"


def demo_chunks(settings: Settings, examples: Path) -> dict[tuple[str, str | None], list[Any]]:
    """The demo tenants' documents as ingestion chunks them, per scope (company, each user)."""
    from transformers import AutoTokenizer

    from loraswarm.services.ingestion.chunking import chunk_sections
    from loraswarm.services.ingestion.parsing import MEDIA_TYPES, parse
    from loraswarm.services.trainer.corpus import CorpusChunk
    from loraswarm.shared.embeddings import model_path
    from loraswarm.shared.events import Document

    tokenizer = AutoTokenizer.from_pretrained(model_path(settings.retrieval.embedding_model))
    scopes: dict[tuple[str, str | None], list[Any]] = {}
    for path in sorted(examples.glob("*/**/*")):
        parts = path.relative_to(examples).parts
        if not path.is_file() or path.suffix not in MEDIA_TYPES or parts[0] == "tenants" or len(parts) < 3:
            continue
        user = parts[2] if parts[1] == "users" and len(parts) > 3 else None
        visibility = f"user:{user}" if user else "company"
        document = Document(
            doc_id=str(path.relative_to(examples)),
            source="examples",
            visibility=visibility,
            media_type=MEDIA_TYPES[path.suffix],
            content=path.read_text(),
        )
        parsed, _ = parse(document, settings.retrieval)
        for unit in parsed:
            pieces = chunk_sections(
                tokenizer, unit.sections, settings.retrieval.chunk_tokens, settings.retrieval.chunk_overlap
            )
            scopes.setdefault((parts[0], user), []).extend(
                CorpusChunk(unit.doc_id, i, "v", visibility, c.text) for i, c in enumerate(pieces)
            )
    return scopes


def builder_cost(settings: Settings, base: Any, steps: int, examples: Path) -> dict[str, float]:
    """Examples/s of the builder on the demo's scopes; seconds per step, builder mix vs raw text."""
    from loraswarm.services.trainer import builder
    from loraswarm.services.trainer.dataset import built_units, document_units, mix_units, training_batches
    from loraswarm.services.trainer.loop import autocast_dtype

    _, tokenizer = base.get()
    from loraswarm.services.trainer import methods

    hp = methods.hyperparameters("lora", settings.trainer.defaults, {"steps": steps, "warmup_steps": 0})
    b = settings.trainer.builder
    scopes = demo_chunks(settings, examples)
    made = builder.from_settings(settings)
    raw_samples: list[Any] = []
    mixed_samples: list[Any] = []
    examples_built = 0
    build_s = 0.0
    for chunks in scopes.values():
        built = made.build(chunks)
        examples_built += len(built.examples)
        build_s += built.seconds
        raw = document_units(chunks, tokenizer, hp.seq_len)
        units, _ = built_units(built.examples, tokenizer, b.max_example_tokens)
        raw_samples += [x for u in raw for x in u.samples]
        mixed_samples += [x for u in mix_units(raw, units, b.raw_text_share) for x in u.samples]
    pad = tokenizer.pad_token_id
    raw_batches = list(islice(training_batches(raw_samples, hp.batch_size, pad, hp.seed), steps + 1))
    mixed_batches = list(islice(training_batches(mixed_samples, hp.batch_size, pad, hp.seed), steps + 1))
    device = base.device.name
    raw_step, mixed_step = _trainer_step(base.fresh(), hp, device), _trainer_step(base.fresh(), hp, device)
    raw_step(raw_batches[0])
    mixed_step(mixed_batches[0])
    raw_s: list[float] = []
    mixed_s: list[float] = []
    for i in range(1, steps + 1):
        pairs = [(raw_step, raw_batches[i], raw_s), (mixed_step, mixed_batches[i], mixed_s)]
        for step, batch, times in pairs if i % 2 else pairs[::-1]:
            started = time.perf_counter()
            step(batch)
            times.append(time.perf_counter() - started)
    return {
        "scopes": float(len(scopes)),
        "chunks": float(sum(len(c) for c in scopes.values())),
        "examples": float(examples_built),
        "build_seconds": build_s,
        "examples_per_s": examples_built / build_s if build_s else float("nan"),
        "raw_sequences": float(len(raw_samples)),
        "mixed_sequences": float(len(mixed_samples)),
        "raw_tokens_per_seq": statistics.mean(len(x.input_ids) for x in raw_samples),
        "mixed_tokens_per_seq": statistics.mean(len(x.input_ids) for x in mixed_samples),
        "raw_step_s": statistics.median(raw_s),
        "mixed_step_s": statistics.median(mixed_s),
        "steps": float(steps),
        "raw_share": b.raw_text_share,
        "bf16": float(autocast_dtype(hp.precision, device) is not None),
    }


def _one_job(
    settings: Settings, base: Any, publish_steps: int, precision: str = "fp32"
) -> tuple[str, dict[str, float]]:
    from loraswarm.services.trainer.pipeline import Published, Trainer
    from loraswarm.services.trainer.scope import Scope
    from loraswarm.shared.events import AdapterTrainRequested, TrainingData

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        job_settings = settings.model_copy(update={"data_dir": Path(tmp) / "data"})
        job_settings.orchestration = settings.orchestration.model_copy(
            update={"tenants_dir": Path(tmp) / "tenants"}
        )
        trainer = Trainer(job_settings, base=base)
        examples = _examples_file(trainer.files.folder(Scope("bench")))
        request = AdapterTrainRequested(
            tenant_id="bench",
            name="stdlib",
            data=TrainingData(documents=False, examples_path=examples),
            hyperparameters={"precision": precision} | ({"steps": publish_steps} if publish_steps else {}),
        )
        started = time.perf_counter()
        outcome = trainer.run(request)
        total = time.perf_counter() - started
    metrics = dict(outcome.metrics)
    metrics["wall_seconds"] = total
    label = (
        f"published {outcome.adapter_id}@{outcome.version}"
        if isinstance(outcome, Published)
        else (f"rejected ({outcome.code}): {outcome.reason}")
    )
    return label, metrics


def run(
    settings: Settings,
    *,
    steps: int,
    publish_steps: int,
    out: Path,
    log: Callable[[str], None] = print,
    examples: Path = Path("examples"),
) -> Results:
    from loraswarm.services.trainer.pipeline import BaseModels

    base = BaseModels(settings)
    _, tokenizer = base.get()
    device = base.device.name
    from loraswarm.services.trainer import methods

    hp = methods.hyperparameters("lora", settings.trainer.defaults, {"steps": steps, "warmup_steps": 0})
    batches = _batches(tokenizer, hp, steps + 1)  # one more: the untimed warm-up step
    label = f"{device} ({base.device.dtype})".replace("torch.", "")
    results = Results(label, steps, hp.batch_size, hp.seq_len)
    log(f"{steps} steps of each loop, interleaved, on {label} ...")
    interleaved(base, batches, hp, device, results)
    log(
        f"bare peft loop {results.bare_tokens_per_s:.0f} tokens/s, trainer {results.trainer_tokens_per_s:.0f}"
    )
    log("one whole job: gather, train, evaluate, gate, publish ...")
    results.job_outcome, results.job = _one_job(settings, base, publish_steps)
    log(results.job_outcome)
    log("the training-set builder on the demo's tenants, and its steps against raw-text steps ...")
    results.builder = builder_cost(settings, base, steps, examples)
    from loraswarm.services.trainer.loop import autocast_dtype

    results.native_bf16 = autocast_dtype("auto", device) is not None
    log(f"the trainer's step in fp32 and in bf16, {steps} steps each, in turn ...")
    precisions(base, batches, hp, device, results)
    log("the same whole job in bf16 ...")
    results.job_bf16_outcome, results.job_bf16 = _one_job(settings, base, publish_steps, "bf16")
    log(results.job_bf16_outcome)
    write_section(out, "training", markdown(results))
    return results


def markdown(r: Results) -> str:
    job = r.job
    steps = int(job.get("steps", 0))
    other = job.get("wall_seconds", 0.0) - job.get("train_seconds", 0.0) - job.get("eval_seconds", 0.0)
    nan = float("nan")
    lines = [
        "## Training (`loraswarm bench training`)",
        "",
        f"Machine: {describe()}; device {r.device}.",
        "",
        f"Throughput on the same {r.steps} batches ({r.batch_size} × up to {r.seq_len} tokens of standard-library "
        "documentation, LoRA r=8 on q/v), the two loops stepping in turn (order swapped every step) so that "
        "load from anything else on the machine falls on both alike:",
        "",
        "| loop | tokens/s | seconds/step (median) |",
        "|---|---|---|",
        f"| bare peft loop (forward, backward, AdamW) | {r.bare_tokens_per_s:.0f} | "
        f"{statistics.median(r.bare_step_s):.2f} |",
        f"| trainer (`AdapterTraining.step`: + schedule, clipping, NaN checks, progress) | "
        f"{r.trainer_tokens_per_s:.0f} | {statistics.median(r.trainer_step_s):.2f} |",
        "",
        f"Trainer / bare: **{r.ratio:.2f}×** over all steps (median of the per-step ratios: "
        f"{r.median_step_ratio:.2f}×; goal ≥ 0.9×).",
        "",
        f"One whole job (train, evaluate, gate, publish) on the default model ({steps} steps of {r.batch_size} × up to "
        f"{r.seq_len} tokens, otherwise default hyper-parameters, {int(job.get('examples', 0))} chat examples): "
        f"{r.job_outcome}.",
        "",
        "| phase | seconds |",
        "|---|---|",
        f"| training ({job.get('train_tokens_per_s', 0):.0f} tokens/s) | {job.get('train_seconds', 0):.1f} |",
        f"| evaluation (held-out loss vs the base model; {int(job.get('canaries', 0))} canaries ranked among "
        f"{int(job.get('leak_references', 0))} references under the new adapter, as the gate does) | "
        f"{job.get('eval_seconds', 0):.1f} |",
        f"| data, model copy, publish | {other:.1f} |",
        f"| **total** | **{job.get('wall_seconds', 0):.1f}** |",
        "",
        f"Held-out loss {job.get('heldout_loss', nan):.3f} vs {job.get('start_heldout_loss', nan):.3f} before "
        f"training; owner canary exposure {job.get('owner_exposure_mean', nan):.2f} bits (never-seen level "
        f"{job.get('leak_never_seen_bits', nan):.2f}, highest measurable {job.get('leak_max_measurable_bits', nan):.2f}).",
    ]
    if r.builder:
        c = r.builder
        lines += [
            "",
            f"The training-set builder (extractor; the LLM generator off, as in the embedded default) on the demo's "
            f"{int(c['scopes'])} scopes ({int(c['chunks'])} chunks): {int(c['examples'])} examples in "
            f"{c['build_seconds']:.2f} s = **{c['examples_per_s']:.0f} examples/s**. Training on them, in the same run, "
            f"{int(c['steps'])} steps each in the trainer's precision then "
            f"({'bf16' if c.get('bf16') else 'fp32'}), stepping in turn:",
            "",
            "| data | sequences | tokens/sequence (mean) | seconds/step (median) |",
            "|---|---|---|---|",
            f"| raw text (the recipe before the builder) | {int(c['raw_sequences'])} | {c['raw_tokens_per_seq']:.0f} | "
            f"{c['raw_step_s']:.2f} |",
            f"| builder's mix (raw share {c.get('raw_share', 0.2):.2f}) | {int(c['mixed_sequences'])} | "
            f"{c['mixed_tokens_per_seq']:.0f} | {c['mixed_step_s']:.2f} |",
            "",
            f"At the same number of steps the builder's data costs {c['mixed_step_s'] / c['raw_step_s']:.2f}× the "
            f"time per step (its retrieval-aware examples carry passages); the build took {c['build_seconds']:.2f} s, "
            f"{c['build_seconds'] / c['mixed_step_s']:.2f} training steps' worth.",
        ]
    if r.bf16_step_s:
        lines += ["", *_precision_lines(r)]
    return "\n".join(lines)


def _precision_lines(r: Results) -> list[str]:
    """4.: bf16 against fp32, speed from the steps in turn, quality from the job in each."""
    nan = float("nan")
    fp32_tps, bf16_tps = r.tokens / sum(r.fp32_step_s), r.tokens / sum(r.bf16_step_s)
    a, b = r.job, r.job_bf16
    loss_a, loss_b = a.get("heldout_loss", nan), b.get("heldout_loss", nan)
    native = "computes bf16 natively (AVX512-BF16 or AMX)" if r.native_bf16 else "only emulates bf16"
    return [
        f"bf16 training (`precision`: the forward pass autocast to bf16; the adapter's weights, gradients and "
        f"AdamW state fp32). This machine {native}. The trainer's step in each precision on the same "
        f"{len(r.fp32_step_s)} batches, in turn:",
        "",
        "| precision | tokens/s | seconds/step (median) |",
        "|---|---|---|",
        f"| fp32 | {fp32_tps:.0f} | {statistics.median(r.fp32_step_s):.2f} |",
        f"| bf16 (autocast) | {bf16_tps:.0f} | {statistics.median(r.bf16_step_s):.2f} |",
        "",
        f"bf16 / fp32: **{bf16_tps / fp32_tps:.2f}×** tokens/s (median of the per-step ratios "
        f"{statistics.median(f / g for f, g in zip(r.fp32_step_s, r.bf16_step_s, strict=True)):.2f}×; goal ≥ 1.8×).",
        "",
        "The whole job above, trained in each precision (same data, seed and steps):",
        "",
        "| precision | outcome | held-out loss | owner canary exposure (bits) | training tokens/s |",
        "|---|---|---|---|---|",
        f"| fp32 | {r.job_outcome} | {loss_a:.4f} | {a.get('owner_exposure_mean', nan):.2f} | "
        f"{a.get('train_tokens_per_s', nan):.0f} |",
        f"| bf16 | {r.job_bf16_outcome} | {loss_b:.4f} | {b.get('owner_exposure_mean', nan):.2f} | "
        f"{b.get('train_tokens_per_s', nan):.0f} |",
        "",
        f"Held-out loss bf16 vs fp32: **{(loss_b / loss_a - 1) * 100:+.2f}%** (goal within ±1%). The trainer's "
        "default stays `precision: fp32` (the gate's canary-recall recipes were calibrated in fp32; with bf16 as the "
        "default three tests regressed); `bf16` and `auto` are opt-in.",
    ]
