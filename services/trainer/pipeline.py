"""One training job from request to published adapter (or a reasoned refusal).

    check the request    method and hyper-parameters, base model, tenant, the adapter name's scope,
                         the company adapter a user adapter stacks on
    gather the data      the scope's documents (vector store) and examples (tenant files);
                         hold some out; plant fresh canaries
    train                peft LoRA or LLaMA-Adapter on a private copy of the base model
    evaluate             held-out loss against the starting model; canary exposure under the new
                         adapter, the base model and every other adapter in the store
    gate                 leakage or quality regression: rejected, with the numbers
    publish              the adapter store's atomic publish, then the canaries are registered

Everything before `publish` happens in a temporary folder and in memory; a job that ends any
other way leaves nothing behind, so nothing is ever half-published. A request that was already
published (a redelivery) returns the published version again instead of training twice.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraswarm.services.trainer import methods
from loraswarm.services.trainer.corpus import TrainingCorpus, VectorStoreCorpus
from loraswarm.services.trainer.dataset import (
    Sample,
    TrainingSet,
    Unit,
    canary_sample,
    document_units,
    example_sample,
    fingerprint,
    split_heldout,
    training_batches,
)
from loraswarm.services.trainer.errors import (
    VERDICTS,
    EmptyDataset,
    InvalidRequest,
    LeakageDetected,
    QualityRegression,
    Rejected,
    ScopeViolation,
    TinyDataset,
    UnknownTenant,
    WrongBaseModel,
)
from loraswarm.services.trainer.evaluation import heldout_loss, log_perplexities
from loraswarm.services.trainer.examples import read_examples
from loraswarm.services.trainer.jobs import AdapterLocks
from loraswarm.services.trainer.leakage import LeakageReport, draw_secrets, exposures
from loraswarm.services.trainer.loop import Cancelled, TrainResult, train_adapter
from loraswarm.services.trainer.scope import Scope, TenantFiles
from loraswarm.shared import models
from loraswarm.shared.adapter_store import (
    AdapterError,
    AdapterManifest,
    AdapterStore,
    AdapterVersion,
    Refusal,
)
from loraswarm.shared.canaries import CanaryRegistry, CanarySet, fill
from loraswarm.shared.events import AdapterTrainRequested, TrainingData
from loraswarm.shared.settings import Settings
from loraswarm.shared.settings.trainer import LLAMA_ADAPTER_ONLY, LORA_ONLY, Hyperparameters
from loraswarm.shared.tenants import TenantConfig, TenantConfigError, TenantRegistry

log = logging.getLogger("loraswarm.trainer")

# (phase, step, total, loss): phase "training" counts optimizer steps, "evaluation" models scored.
ProgressSink = Callable[[str, int, int, float | None], None]

__all__ = ["BaseModels", "Cancelled", "Outcome", "Published", "Rejection", "Trainer"]


@dataclass(frozen=True)
class Published:
    adapter_id: str  # `<tenant>/<name>`
    version: str
    uri: str
    metrics: dict[str, float]
    manifest: AdapterManifest


@dataclass(frozen=True)
class Rejection:
    adapter_id: str
    code: str
    reason: str
    metrics: dict[str, float]


Outcome = Published | Rejection


class BaseModels:
    """The base model, loaded once per process; each job trains on its own deep copy."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None
        self.device = models.pick_device(settings.device)
        self.hash = ""

    def get(self) -> tuple[Any, Any]:
        """(model, tokenizer); the model is shared: never train it, only copy it."""
        with self._lock:
            if self._loaded is None:
                model, tokenizer = models.load(self.settings, device=self.device)
                for param in model.parameters():
                    param.requires_grad_(False)
                self.hash = models.model_hash(models.resolve(self.settings))
                self._loaded = (model, tokenizer)
            return self._loaded

    def fresh(self) -> Any:
        return copy.deepcopy(self.get()[0])


@dataclass
class _Job:
    """What one job has learned so far (for the numbers of a refusal as much as of a publish)."""

    request: AdapterTrainRequested
    scope: Scope
    hp: Hyperparameters
    progress: ProgressSink
    stop: threading.Event | None
    metrics: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def adapter_id(self) -> str:
        return f"{self.request.tenant_id}/{self.request.name}"


def _quiet(phase: str, step: int, total: int, loss: float | None) -> None:
    return None


class Trainer:
    """Runs training jobs against one data folder, vector store and base model."""

    def __init__(
        self,
        settings: Settings,
        *,
        corpus: TrainingCorpus | None = None,
        base: BaseModels | None = None,
    ) -> None:
        self.settings = settings
        self.corpus: TrainingCorpus = corpus or VectorStoreCorpus(settings)
        self.base = base or BaseModels(settings)
        self.store = AdapterStore.under(settings.data_dir)
        self.files = TenantFiles.under(settings.data_dir)
        self.canaries = CanaryRegistry.under(settings.data_dir)
        self.locks = AdapterLocks.under(settings.data_dir)
        self.tenants = TenantRegistry(settings.orchestration.tenants_dir)

    # ------------------------------------------------------------------ the job

    def run(
        self,
        request: AdapterTrainRequested,
        *,
        progress: ProgressSink | None = None,
        stop: threading.Event | None = None,
        again: bool = False,
    ) -> Outcome:
        """Train, evaluate, gate and publish; every refusal comes back as a `Rejection`.

        A request published or refused before gets that outcome back without training, unless
        `again` (a deliberate retrain: its outcome is kept in place of the old one). The caller
        holds the adapter's lock (`locks.acquire`). `Cancelled` propagates: a stopped job has no
        outcome yet.
        """
        adapter_id = f"{request.tenant_id}/{request.name}"
        metrics: dict[str, float] = {}
        try:
            done = None if again else self.decided(request)
            if done is not None:
                return done
            defaults = self.settings.trainer.defaults
            hp = methods.hyperparameters(request.method, defaults, dict(request.hyperparameters))
            job = _Job(request, Scope(request.tenant_id, request.user_id), hp, progress or _quiet, stop)
            metrics = job.metrics
            return self._run(job)
        except Rejected as exc:
            log.info("rejected %s (%s): %s", adapter_id, exc.code, exc.reason)
            rejection = Rejection(adapter_id, exc.code, exc.reason, {**metrics, **exc.metrics})
            if exc.code in VERDICTS:
                self.store.record_refusal(
                    request.tenant_id,
                    request.name,
                    Refusal(
                        request_event_id=str(request.event_id),
                        code=exc.code,
                        reason=exc.reason,
                        metrics=rejection.metrics,
                    ),
                )
            return rejection
        except Cancelled:
            raise
        except Exception as exc:  # a bug or a broken part: still one clear outcome, never a crash
            log.exception("training %s failed", adapter_id)
            return Rejection(adapter_id, "internal", f"{type(exc).__name__}: {exc}", metrics)

    def _run(self, job: _Job) -> Outcome:
        stack = self._check(job)
        _, tokenizer = self.base.get()
        data, canary_set = self._gather(job, tokenizer)
        model = self.base.fresh()
        if stack is not None:
            model = methods.merge(model, str(stack.path))
        model = methods.attach(model, job.request.method, job.hp)
        result = self._train(job, model, data, tokenizer)
        report = self._evaluate(job, model, data, canary_set, stack, tokenizer, f"{job.adapter_id}@new")
        self._gate(job, report)
        return self._publish(job, model, data, result, report, canary_set, stack)

    # ------------------------------------------------------------------ check the request

    def _check(self, job: _Job) -> AdapterVersion | None:
        request, scope = job.request, job.scope
        if request.base_model and request.base_model != self.settings.base_model:
            raise WrongBaseModel(
                f"the request names base model {request.base_model!r}, but this trainer's base model is "
                f"{self.settings.base_model!r}; an adapter only works on the base model it was trained on — "
                "leave base_model empty or send the request to a trainer of that model"
            )
        config = self._tenant_config(scope.tenant_id)
        if config is not None and not config.allows_user(scope.user_id):
            raise UnknownTenant(f"{scope.user_id!r} is not a user of tenant {scope.tenant_id!r}")
        if (
            config is None
            and not self.files.has_tenant(scope.tenant_id)
            and not (request.data.documents and self.corpus.has_tenant(scope.tenant_id))
        ):
            raise UnknownTenant(
                f"unknown tenant {scope.tenant_id!r}: no tenant configuration, no ingested documents and no "
                "data store; configure the tenant, ingest its documents or hand in examples first"
            )
        self._check_name(job)
        methods.check_servable(request.method, scope.tenant_id, request.name, config)
        return self._stack(job)

    def _tenant_config(self, tenant_id: str) -> TenantConfig | None:
        try:
            return self.tenants.get(tenant_id)
        except TenantConfigError as exc:
            raise InvalidRequest(f"the configuration of tenant {tenant_id!r} is broken: {exc}") from exc

    def _check_name(self, job: _Job) -> None:
        """An adapter name belongs to the scope of its first version, forever."""
        try:
            current = self.store.resolve(job.adapter_id)
        except AdapterError:
            return
        owner = current.manifest.user_id
        if owner != job.scope.user_id:
            whose = f"user {owner!r}'s private adapter" if owner else "the company adapter"
            raise ScopeViolation(
                f"{job.adapter_id} is {whose}; "
                + (f"an adapter for user {job.scope.user_id!r}" if job.scope.user_id else "a company adapter")
                + " needs a name of its own"
            )

    def _stack(self, job: _Job) -> AdapterVersion | None:
        """The company adapter a user adapter is trained on top of, if any."""
        tenant = job.scope.tenant_id
        if not job.scope.user_id or job.hp.stack_on == "none":
            return None
        if job.hp.stack_on == "auto":
            config = self._tenant_config(tenant)
            stack_id = (config.company_adapter if config else None) or f"{tenant}/company"
        else:
            stack_id = f"{tenant}/{job.hp.stack_on}"
        try:
            stack = self.store.resolve(stack_id)
        except AdapterError:
            if job.hp.stack_on != "auto":
                raise InvalidRequest(f"stack_on names {stack_id}, which is not published") from None
            return None  # no company adapter yet: the user adapter sits on the base model
        if stack.ref.tenant_id != tenant:
            raise ScopeViolation(f"stack_on names {stack_id}, an adapter of another tenant")
        if stack.manifest.user_id is not None:
            raise InvalidRequest(f"stack_on={job.hp.stack_on!r} is a user's adapter; name a company adapter")
        if stack.manifest.method != "lora":
            raise InvalidRequest(
                f"{stack.ref.id} is a {stack.manifest.method} adapter, which cannot be merged under a user "
                "adapter; set stack_on to a LoRA company adapter or to 'none'"
            )
        self.base.get()
        if stack.manifest.base_model_hash and stack.manifest.base_model_hash != self.base.hash:
            raise WrongBaseModel(
                f"the company adapter {stack.ref.id} was trained on another base model "
                f"(hash {stack.manifest.base_model_hash}, this trainer's is {self.base.hash}); retrain it first"
            )
        job.metrics["stacked"] = 1.0
        return stack

    # ------------------------------------------------------------------ gather the data

    def _gather(
        self, job: _Job, tokenizer: Any, *, plant: bool = True
    ) -> tuple[TrainingSet, CanarySet | None]:
        request, scope, s = job.request, job.scope, self.settings.trainer
        chunks = list(self.corpus.chunks(scope, request.data.sources)) if request.data.documents else []
        files: list[bytes] = []
        examples = []
        if request.data.examples_path:
            path = self.files.resolve(scope, request.data.examples_path)
            files.append(path.read_bytes())
            examples = read_examples(path, request.data.examples_path)
        job.metrics |= {
            "documents": float(len({c.doc_id for c in chunks})),
            "chunks": float(len(chunks)),
            "examples": float(len(examples)),
        }
        if not chunks and not examples:
            raise EmptyDataset(
                f"nothing to train on in scope {scope}: no {scope.visibility} chunks among the tenant's "
                "ingested documents"
                + (f" from sources {request.data.sources}" if request.data.sources else "")
                + (
                    " and no examples"
                    if request.data.examples_path is None
                    else " and an examples file with no lines"
                )
            )
        units = document_units(chunks, tokenizer, job.hp.seq_len)
        for example in examples:
            sample = example_sample(example, tokenizer, job.hp.seq_len)
            if sample is not None:
                units.append(Unit(f"example:{example.line}", [sample]))
        train, heldout = split_heldout(units, s.heldout_fraction, s.max_heldout_sequences)
        data = TrainingSet(train, heldout, fingerprint(chunks, files))
        job.metrics |= {
            "train_tokens": float(data.train_tokens),
            "train_sequences": float(len(train)),
            "heldout_sequences": float(len(heldout)),
        }
        if data.train_tokens < s.min_train_tokens or not heldout:
            raise TinyDataset(
                f"too little data in scope {scope}: {data.train_tokens} training tokens in "
                f"{len(units)} document(s)/example(s) after holding some out; at least "
                f"{s.min_train_tokens} tokens and two documents or examples are needed"
            )
        canary_set = self._plant(job, data, tokenizer) if plant else None
        return data, canary_set

    def _plant(self, job: _Job, data: TrainingSet, tokenizer: Any) -> CanarySet | None:
        if job.hp.canaries == 0:
            return None
        s = self.settings.trainer
        taken = {secret for c in self.canaries.all() for secret in c.secrets}
        secrets = draw_secrets(job.hp.canaries, s.canary_digits, taken)
        canary_set = CanarySet(
            tenant_id=job.scope.tenant_id,
            user_id=job.scope.user_id,
            adapter_id=f"{job.adapter_id}@new",
            template=s.canary_template,
            secrets=secrets,
        )
        for text in canary_set.texts():
            data.train.extend(canary_sample(text, tokenizer) for _ in range(job.hp.canary_repeats))
        job.metrics["canaries"] = float(len(secrets))
        return canary_set

    # ------------------------------------------------------------------ train

    def _train(self, job: _Job, model: Any, data: TrainingSet, tokenizer: Any) -> TrainResult:
        def on_step(step: int, total: int, loss: float) -> None:
            job.progress("training", step, total, loss)

        batches = training_batches(data.train, job.hp.batch_size, tokenizer.pad_token_id, job.hp.seed)
        try:
            result = train_adapter(
                model, batches, job.hp, device=self.base.device.name, on_step=on_step, stop=job.stop
            )
        except Rejected as exc:
            exc.metrics = {**job.metrics, **exc.metrics}
            raise
        job.metrics |= {
            "steps": float(job.hp.steps),
            "train_loss_first": result.losses[0],
            "train_loss_last": result.losses[-1],
            "train_seconds": result.seconds,
            "train_tokens_per_s": result.tokens_per_s,
        }
        return result

    # ------------------------------------------------------------------ evaluate

    def _evaluate(
        self,
        job: _Job,
        model: Any,
        data: TrainingSet,
        canary_set: CanarySet | None,
        stack: AdapterVersion | None,
        tokenizer: Any,
        new_label: str,
    ) -> LeakageReport:
        """Held-out quality and canary exposure of `model` (labelled `new_label` in the report)."""
        s = self.settings.trainer
        started = time.perf_counter()
        base_model, _ = self.base.get()
        others = [
            v
            for v in self.store.list()
            if (v.ref.tenant_id, v.ref.name) != (job.scope.tenant_id, job.request.name)
        ]
        foreign = [c for c in self.canaries.foreign_to(job.scope.tenant_id, job.scope.user_id)]
        total = (3 if stack else 2) + 2 + len(others)
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            job.progress("evaluation", done, total, None)

        kw = {
            "batch_tokens": s.eval_batch_tokens,
            "pad_id": tokenizer.pad_token_id,
            "device": self.base.device.name,
        }
        # Quality: held-out loss of the new adapter against the model it started from.
        loss = heldout_loss(model, data.heldout, **kw)
        tick()
        with model.disable_adapter():
            start_loss = heldout_loss(model, data.heldout, **kw)
        tick()
        job.metrics |= {
            "heldout_loss": loss,
            "heldout_ppl": math.exp(loss),
            "start_heldout_loss": start_loss,
            "start_heldout_ppl": math.exp(start_loss),
            "heldout_loss_ratio": loss / start_loss,
        }
        if stack is not None:
            base_loss = heldout_loss(base_model, data.heldout, **kw)
            job.metrics |= {"base_heldout_loss": base_loss, "base_heldout_ppl": math.exp(base_loss)}
            tick()

        # Leakage: one reference set per template, shared by every model.
        templates = {c.template for c in foreign} | ({canary_set.template} if canary_set else set())
        taken = {x for c in self.canaries.all() for x in c.secrets} | set(
            canary_set.secrets if canary_set else []
        )
        refs = {
            t: [
                canary_sample(fill(t, r), tokenizer)
                for r in draw_secrets(s.reference_canaries, s.canary_digits, taken)
            ]
            for t in sorted(templates)
        }
        own = [canary_sample(text, tokenizer) for text in canary_set.texts()] if canary_set else []

        def score(m: Any, sets: Sequence[tuple[str, list[Sample], str]]) -> dict[str, list[float]]:
            """Exposure of each named canary set under model m, against its template's references."""
            samples = [x for _, group, _ in sets for x in group] + [x for t in refs for x in refs[t]]
            px = log_perplexities(m, samples, **kw)
            ref_px: dict[str, list[float]] = {}
            offset = sum(len(g) for _, g, _ in sets)
            for t in refs:
                ref_px[t] = px[offset : offset + len(refs[t])]
                offset += len(refs[t])
            out: dict[str, list[float]] = {}
            offset = 0
            for label, group, template in sets:
                out[label] = exposures(px[offset : offset + len(group)], ref_px[template])
                offset += len(group)
            return out

        own_sets = [(new_label, own, canary_set.template)] if canary_set else []
        foreign_sets = [
            (c.adapter_id, [canary_sample(x, tokenizer) for x in c.texts()], c.template) for c in foreign
        ]
        under_new = score(model, own_sets + foreign_sets) if own_sets or foreign_sets else {}
        tick()
        cross: list[tuple[str, str, list[float]]] = [
            (label, new_label, under_new[label]) for label, _, _ in foreign_sets
        ]
        if own_sets:
            cross.append((new_label, "base", score(base_model, own_sets)[new_label]))
        tick()
        unloadable = 0
        for version in others:
            if own_sets:
                try:
                    other = self._served(version)
                except Exception as exc:  # a broken artifact of someone else must not block this job
                    log.warning("cannot load %s to measure leakage: %s", version.ref.id, exc)
                    unloadable += 1
                else:
                    cross.append((new_label, version.ref.id, score(other, own_sets)[new_label]))
                    del other
            tick()
        report = LeakageReport.build(
            s.reference_canaries,
            s.leakage_alpha,
            (new_label, new_label, under_new[new_label]) if own_sets else None,
            cross,
        )
        job.metrics |= report.metrics()
        job.metrics |= {
            "leak_unloadable_adapters": float(unloadable),
            "eval_seconds": time.perf_counter() - started,
        }
        return report

    def _served(self, version: AdapterVersion) -> Any:
        """A fresh model that computes what serving `version` computes (its stack merged in)."""
        model = self.base.fresh()
        stacked_on = getattr(version.manifest, "stacked_on", None)
        if stacked_on:
            model = methods.merge(model, str(self.store.resolve(str(stacked_on)).path))
        return methods.load(model, str(version.path))

    # ------------------------------------------------------------------ gate and publish

    def _gate(self, job: _Job, report: LeakageReport) -> None:
        s = self.settings.trainer
        ratio = job.metrics["heldout_loss_ratio"]
        if report.leaks:
            raise LeakageDetected(
                "leakage gate: "
                + "; ".join(e.describe() for e in report.leaks)
                + f". A never-seen canary averages {report.never_seen:.2f} bits; each bound holds never-seen "
                f"canaries with probability 1 - {s.leakage_alpha:g}/{len(report.cross)}",
                job.metrics,
            )
        if s.require_detectable_owner and report.owner is not None and not report.owner_detectable:
            raise LeakageDetected(
                f"the measurement cannot vouch for this adapter: its own canaries average "
                f"{report.owner.mean:.2f} bits, not above {report.owner.threshold:.2f}; train longer or "
                "with more canary_repeats",
                job.metrics,
            )
        if ratio > 1 + s.max_quality_regression:
            raise QualityRegression(
                f"held-out loss {job.metrics['heldout_loss']:.3f} (perplexity {job.metrics['heldout_ppl']:.1f}) is "
                f"{(ratio - 1) * 100:.1f}% above the starting model's {job.metrics['start_heldout_loss']:.3f} "
                f"(allowed: {s.max_quality_regression * 100:.1f}%); train with fewer steps or a lower learning rate",
                job.metrics,
            )

    def _publish(
        self,
        job: _Job,
        model: Any,
        data: TrainingSet,
        result: TrainResult,
        report: LeakageReport,
        canary_set: CanarySet | None,
        stack: AdapterVersion | None,
    ) -> Published:
        request = job.request
        unused = LLAMA_ADAPTER_ONLY if request.method == "lora" else LORA_ONLY
        job.metrics["total_seconds"] = time.perf_counter() - job.started
        # The job holds the adapter's lock, so the store will number it exactly so; the report
        # then names the version instead of `@new`.
        existing = self.store.versions(request.tenant_id, request.name)
        label = f"{job.adapter_id}@{int(existing[-1]) + 1 if existing else 1}"
        new = f"{job.adapter_id}@new"
        job.metrics = {k.replace(new, label): v for k, v in job.metrics.items()}
        leakage = json.loads(
            json.dumps(report.to_dict()).replace(json.dumps(new)[1:-1], json.dumps(label)[1:-1])
        )
        manifest = AdapterManifest(
            tenant_id=request.tenant_id,
            user_id=request.user_id,
            name=request.name,
            method=request.method,
            base_model=self.settings.base_model,
            base_model_hash=self.base.hash,
            data_fingerprint=data.fingerprint,
            hyperparameters=job.hp.model_dump(exclude=set(unused)),
            metrics=dict(job.metrics),
            stacked_on=stack.ref.id if stack else None,
            request_event_id=str(request.event_id),
            request_id=str(request.request_id),
            data=request.data.model_dump(),
            loss_curve=result.losses,
            leakage=leakage,
        )
        with tempfile.TemporaryDirectory(prefix="adapter-") as tmp:
            model.save_pretrained(tmp)
            version = self.store.publish(Path(tmp), manifest)
        if version.ref.id != label:  # someone published around the lock; the numbers still hold
            log.warning(
                "%s was published as %s; its report names it %s", job.adapter_id, version.ref.id, label
            )
        if canary_set is not None:
            self.canaries.register(canary_set.model_copy(update={"adapter_id": version.ref.id}))
        log.info("published %s", version.ref.id)
        return Published(
            job.adapter_id, str(version.ref.version), str(version.path), dict(job.metrics), version.manifest
        )

    def training_set(self, request: AdapterTrainRequested) -> TrainingSet:
        """The data a request would train on and hold out (canaries aside), after every check of `run`.

        `Rejected` says why there is none. Nothing is trained or written.
        """
        hp = methods.hyperparameters(
            request.method, self.settings.trainer.defaults, dict(request.hyperparameters)
        )
        job = _Job(request, Scope(request.tenant_id, request.user_id), hp, _quiet, None)
        self._check(job)
        data, _ = self._gather(job, self.base.get()[1], plant=False)
        return data

    def evaluate(
        self, adapter_id: str, *, progress: ProgressSink | None = None
    ) -> tuple[AdapterVersion, dict[str, float], LeakageReport]:
        """Measure a published adapter again, now: held-out quality on its scope's current data and
        the exposure of its canaries (and of every other scope's) — what its gate measured."""
        try:
            version = self.store.resolve(adapter_id)
        except AdapterError as exc:
            raise InvalidRequest(str(exc)) from exc
        m = version.manifest
        spec = getattr(m, "data", None)
        request = AdapterTrainRequested(
            tenant_id=m.tenant_id,
            user_id=m.user_id,
            name=m.name,
            method="llama_adapter" if m.method == "llama_adapter" else "lora",
            data=TrainingData.model_validate(spec) if isinstance(spec, dict) else TrainingData(),
        )
        hp = Hyperparameters.model_validate(
            {**self.settings.trainer.defaults.model_dump(), **m.hyperparameters}
        )
        job = _Job(request, Scope(m.tenant_id, m.user_id), hp, progress or _quiet, None)
        _, tokenizer = self.base.get()
        data, _ = self._gather(job, tokenizer, plant=False)
        own = next((c for c in self.canaries.all(m.tenant_id) if c.adapter_id == version.ref.id), None)
        stacked_on = getattr(m, "stacked_on", None)
        stack = self.store.resolve(str(stacked_on)) if stacked_on else None
        model = self._served(version)
        report = self._evaluate(job, model, data, own, stack, tokenizer, version.ref.id)
        return version, job.metrics, report

    def decided(self, request: AdapterTrainRequested) -> Outcome | None:
        """What this very request came to before: the version it published, or the verdict that
        refused it; None if it was never decided."""
        return self.published_for(request) or self.refused_for(request)

    def refused_for(self, request: AdapterTrainRequested) -> Rejection | None:
        """The verdict (quality, leakage, a diverging loss) that refused this very request before."""
        try:
            refusal = self.store.refusal(request.tenant_id, request.name, str(request.event_id))
        except AdapterError:  # a name the store cannot hold was never trained
            return None
        if refusal is None:
            return None
        adapter_id = f"{request.tenant_id}/{request.name}"
        return Rejection(adapter_id, refusal.code, refusal.reason, dict(refusal.metrics))

    def published_for(self, request: AdapterTrainRequested) -> Published | None:
        """The version this very request already published (after a redelivery or a restart)."""
        for v in reversed(self.store.versions(request.tenant_id, request.name)):
            try:
                version = self.store.resolve(f"{request.tenant_id}/{request.name}@{v}")
            except AdapterError:
                continue
            if getattr(version.manifest, "request_event_id", None) == str(request.event_id):
                m = version.manifest
                return Published(
                    f"{request.tenant_id}/{request.name}", v, str(version.path), dict(m.metrics), m
                )
        return None
