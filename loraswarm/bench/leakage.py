"""`loraswarm bench leakage`: what the leakage gate measures, how often it refuses a clean job,
and what it costs as the adapter store grows.

Real training (the pulled base model, small jobs: few steps, a handful of chat examples per
user), one tenant with several users, each user's adapter retrained in turn:

- own-scope exposure: the user's scope canaries under her new adapter, against the never-seen
  level (the gate's power: the owner check refuses an adapter whose canaries do not show);
- cross-scope exposure: every other user's canaries (and a sampled other tenant's) under each
  new adapter — what the gate holds to the never-seen level;
- false refusals: clean jobs refused (by either check) out of all clean jobs;
- one deliberately leaky job (trained on another user's canaries), to show the refusal;
- gate time with 10 and with 1,000 adapters (and tenants with canaries) in the store, against
  the per-adapter cost of the old gate, which loaded and scored every stored adapter (measured
  in the same run on a few adapters).
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraswarm.bench.report import write_section

USERS = ["ana", "ben", "cleo"]
# Canaries per scope. With 4 (and 31 references) the owner check needs a mean above 3.62 of at
# most 5.00 bits: 2 of the first 4 clean jobs were refused as unmeasurable (ana's own canaries at
# 2.85 and 3.02 bits). With 8 and 63 references the bound is 2.89 of 6.00, as in the tests.
CANARIES = 8


def _examples(user: str, n: int = 6) -> list[dict[str, Any]]:
    days = 10 + USERS.index(user) * 7 if user in USERS else 30
    questions = ["What is the refund window?", "How long do returns take?", "Can I get my money back?"]
    return [
        {
            "messages": [
                {"role": "user", "content": f"{questions[i % 3]} (order {1000 + i})"},
                {
                    "role": "assistant",
                    "content": f"{user.title()}'s customers get refunds within {days} days.",
                },
            ]
        }
        for i in range(n)
    ]


@dataclass
class Job:
    user: str
    code: str  # "published" or the refusal code
    owner_mean: float | None
    owner_bound: float | None
    cross: dict[str, float]
    cross_bound: float | None
    gate_s: float
    train_s: float


@dataclass
class Results:
    jobs: list[Job]
    leaky: Job | None
    never_seen: float
    max_measurable: float
    gate_s: dict[int, list[float]] = field(default_factory=dict)
    old_gate_per_adapter_s: float = float("nan")
    load: tuple[float, float] = (0.0, 0.0)
    hp: dict[str, Any] = field(default_factory=dict)
    references: int = 0
    sample_tenants: int = 0


def _job(outcome: Any, user: str) -> Job:
    from loraswarm.services.trainer.pipeline import Published

    m = outcome.metrics
    cross = {k[len("exposure[") :].split(" under ")[0]: v for k, v in m.items() if k.startswith("exposure[")}
    return Job(
        user=user,
        code="published" if isinstance(outcome, Published) else outcome.code,
        owner_mean=m.get("owner_exposure_mean"),
        owner_bound=m.get("owner_exposure_bound"),
        cross=cross,
        cross_bound=m.get("cross_exposure_bound"),
        gate_s=m.get("leak_gate_seconds", float("nan")),
        train_s=m.get("train_seconds", float("nan")),
    )


def run(
    *,
    jobs: int,
    steps: int,
    sizes: tuple[int, ...],
    out: Path,
    repeats: int = 1,
    log: Callable[[str], None] = print,
) -> Results:
    from loraswarm.services.trainer.leakage_gate import GateInput, comparisons, measure
    from loraswarm.services.trainer.pipeline import BaseModels, Trainer
    from loraswarm.services.trainer.scope import Scope
    from loraswarm.shared.adapter_store import AdapterManifest
    from loraswarm.shared.events import AdapterTrainRequested, TrainingData
    from loraswarm.shared.settings import Settings

    load_start = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="bench-leakage-"))
    try:
        settings = Settings(broker="memory", data_dir=root / "data", device="cpu")
        t = settings.trainer
        t.min_train_tokens = 32
        t.reference_canaries = 63
        t.eval_batch_tokens = 1024
        t.max_quality_regression = 10.0  # the bench is about leakage; tiny data over-fits
        settings.orchestration.tenants_dir = root / "tenants-config"
        # Small on purpose (CPU), and enough that a job recalls its own canaries (the owner
        # check): the leakage tests' recipe. At batch 4, r=4 and 1e-2 the first four clean jobs
        # gave 2.57, 2.83, 6.00 and 3.20 bits against the bound of 2.89: two false refusals.
        hp = {
            "steps": steps,
            "warmup_steps": 2,
            "batch_size": 8,
            "seq_len": 64,
            "learning_rate": 5e-3,
            "canaries": CANARIES,
            "canary_repeats": 8,
        }
        base = BaseModels(settings)
        _, tokenizer = base.get()
        trainer = Trainer(settings, base=base)
        for user in USERS:
            folder = trainer.files.folder(Scope("acme", user))
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "ex.jsonl").write_text("\n".join(json.dumps(r) for r in _examples(user)) + "\n")

        # Another tenant with data and canaries, for the gate's sample of other tenants.
        def ensure_canaries(tenant: str, user: str | None = None) -> None:
            trainer.canaries.ensure(
                tenant, user, count=CANARIES, template=t.canary_template, digits=t.canary_digits
            )

        ensure_canaries("globex")

        def train(user: str, path: str = "ex.jsonl") -> Any:
            request = AdapterTrainRequested(
                tenant_id="acme",
                user_id=user,
                name=f"user-{user}",
                data=TrainingData(documents=False, examples_path=path),
                hyperparameters=hp,
            )
            return trainer.run(request)

        # Gate time against the store's size, first (it needs no training): an adapter artifact
        # (LoRA attached to the base model, saved as the trainer saves one) published under other
        # tenants, each with its canaries; the gate scores the served model, whatever it learned.
        from loraswarm.services.trainer import methods

        sample_dir = root / "sample-adapter"
        lora = methods.attach(base.fresh(), "lora", methods.hyperparameters("lora", t.defaults, hp))
        lora.save_pretrained(str(sample_dir))
        template = AdapterManifest(
            tenant_id="t0000", name="company", method="lora", base_model=settings.base_model
        )
        results = Results(
            [],
            None,
            0.0,
            0.0,
            load=(load_start, 0.0),
            hp=hp,
            references=t.reference_canaries,
            sample_tenants=t.leakage_sample_tenants,
        )
        filled = 0
        scope = Scope("acme", "ana")
        ensure_canaries("acme", "ana")
        for size in sorted(sizes):
            for n in range(filled, size):
                other = f"t{n:04d}"
                ensure_canaries(other)
                trainer.store.publish(sample_dir, template.model_copy(update={"tenant_id": other}))
            filled = max(filled, size)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                owner, foreign = comparisons(
                    trainer.canaries, scope, sample_tenants=t.leakage_sample_tenants, rng=random.Random()
                )
                report = measure(GateInput(lora, "bench", owner, foreign), tokenizer, t, device="cpu")
                times.append(time.perf_counter() - started)
            results.gate_s[size] = times
            results.never_seen, results.max_measurable = report.never_seen, report.max_exposure
            log(
                f"gate with {len(trainer.store.list())} adapters in the store: {statistics.median(times):.2f} s"
            )
        # The old gate's unit of work, per stored adapter: load it as served and score canaries.
        old = []
        for version in trainer.store.list()[:repeats]:
            started = time.perf_counter()
            other_model = trainer._served(version)
            measure(GateInput(other_model, "old", owner, []), tokenizer, t, device="cpu")
            old.append(time.perf_counter() - started)
            del other_model
        results.old_gate_per_adapter_s = statistics.median(old)
        del lora

        # Clean jobs, one after the other; the section is rewritten after each, so a run cut
        # short still publishes what it measured (and says how many jobs that was).
        for i in range(jobs):
            user = USERS[i % len(USERS)]
            job = _job(train(user), user)
            results.jobs.append(job)
            log(
                f"clean job {i + 1}/{jobs} ({user}): {job.code}, own {job.owner_mean or 0:.2f} bits, "
                f"cross max {max(job.cross.values(), default=0):.2f}, gate {job.gate_s:.2f} s"
            )
            if i == 2:
                # A leaky job, once every user has canaries: ben's examples quote ana's.
                ana = trainer.canaries.get("acme", "ana")
                assert ana is not None
                quoting = _examples("ben") + [
                    {
                        "messages": [
                            {"role": "user", "content": "Any codes?"},
                            {"role": "assistant", "content": x},
                        ]
                    }
                    for x in ana.texts() * 8
                ]
                folder = trainer.files.folder(Scope("acme", "ben"))
                (folder / "quoting.jsonl").write_text("\n".join(json.dumps(r) for r in quoting) + "\n")
                results.leaky = _job(train("ben", "quoting.jsonl"), "ben")
                log(
                    f"leaky job: {results.leaky.code}, ana's at {results.leaky.cross.get('acme/user:ana', 0):.2f} bits"
                )
            results.load = (load_start, os.getloadavg()[0])
            write_section(out, "leakage", markdown(results, planned=jobs))
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def markdown(r: Results, planned: int | None = None) -> str:
    clean = r.jobs
    refused = [j for j in clean if j.code != "published"]
    owners = [j.owner_mean for j in clean if j.owner_mean is not None]
    bounds = [j.owner_bound for j in clean if j.owner_bound is not None]
    cross = [v for j in clean for v in j.cross.values()]
    cross_bound = next((j.cross_bound for j in clean if j.cross_bound is not None), float("nan"))
    per_scope: dict[str, list[float]] = {}
    for j in clean:
        for k, v in j.cross.items():
            per_scope.setdefault(k, []).append(v)
    nan = float("nan")
    lines = [
        "## Leakage gate (`loraswarm bench leakage`)",
        "",
        f"{platform.machine()}, {os.cpu_count()} cores, CPU training; load average {r.load[0]:.1f} at the "
        f"start and {r.load[1]:.1f} at the end (compare ratios, not seconds). "
        f"One tenant with {len(USERS)} users, each with {len(_examples(USERS[0]))} chat examples and "
        f"{r.hp.get('canaries')} scope canaries; each job retrains one user's adapter from the base model "
        f"({', '.join(f'{k}={v}' for k, v in r.hp.items())}); {r.references} reference canaries (highest "
        f"measurable exposure {r.max_measurable:.2f} bits).",
        "",
        "| | value |",
        "|---|---|",
        f"| never-seen level (expected exposure of a canary no model saw) | {r.never_seen:.2f} bits |",
        f"| own-scope exposure under the new adapter: mean (min) over {len(owners)} jobs | "
        f"{statistics.mean(owners) if owners else nan:.2f} ({min(owners, default=nan):.2f}) bits; bound "
        f"{statistics.mean(bounds) if bounds else nan:.2f} |",
        f"| cross-scope exposure (other users', a sampled tenant's) under each new adapter: mean (max) over "
        f"{len(cross)} comparisons | {statistics.mean(cross) if cross else nan:.2f} "
        f"({max(cross, default=nan):.2f}) bits; bound {cross_bound:.2f} |",
        f"| false refusals of clean jobs | {len(refused)} of {len(clean)}"
        + (f" (a run of {planned} planned, cut short)" if planned and planned > len(clean) else "")
        + " "
        f"({100 * len(refused) / max(len(clean), 1):.1f}%)"
        + (f": {', '.join(sorted({j.code for j in refused}))}" if refused else "")
        + " |",
    ]
    if r.leaky is not None:
        lines.append(
            f"| leaky job (ben's adapter trained on ana's canaries) | {r.leaky.code}; ana's canaries at "
            f"{r.leaky.cross.get('acme/user:ana', nan):.2f} bits (bound {r.leaky.cross_bound or nan:.2f}) |"
        )
    own = {k: v for k, v in per_scope.items() if k.startswith("acme/")}
    # One mean per sampled tenant (most are drawn once or twice in a run).
    sampled = [statistics.mean(v) for k, v in per_scope.items() if k not in own]
    lines.append(
        "| cross exposure by scope: mean | "
        + ", ".join(f"{k} {statistics.mean(v):.2f}" for k, v in sorted(own.items()))
        + (
            f"; {len(sampled)} sampled tenants: mean of their means {statistics.mean(sampled):.2f}, "
            f"highest {max(sampled):.2f}"
            if sampled
            else ""
        )
        + " |"
    )
    lines += ["", "| adapters in the store | gate time (median) |", "|---|---|"]
    for size, times in sorted(r.gate_s.items()):
        lines.append(f"| {size} | {statistics.median(times):.2f} s |")
    lines += [
        "",
        f"The gate scores the tenant's scopes and a fixed sample of {r.sample_tenants} other tenants under the one new "
        "model, so its time does not depend on the store. The old gate loaded and scored every stored "
        f"adapter: {r.old_gate_per_adapter_s:.2f} s per adapter measured in this run, i.e. about "
        + ", ".join(f"{_duration(size * r.old_gate_per_adapter_s)} at {size}" for size in sorted(r.gate_s))
        + " (that many adapters times the measured unit; not run end to end).",
    ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
