"""One training job from request to published adapter (or a reasoned refusal).

    check the request    method and hyper-parameters, base model, tenant, the adapter name's scope,
                         the company adapter a user adapter stacks on
    gather the data      the scope's documents (vector store) and examples (tenant files);
                         hold some out; plant the canaries of the scopes read (every scope with
                         data has its own set, made the first time a job finds the data)
    train                peft LoRA or LLaMA-Adapter on a private copy of the base model
    evaluate             held-out loss against the starting model
    leakage gate         services/trainer/leakage_gate.py, on the model as it will be served
    gate                 leakage or quality regression: rejected, with the numbers
    publish              the adapter store's atomic publish

Everything before `publish` happens in a temporary folder and in memory; a job that ends any
other way leaves nothing behind, so nothing is ever half-published. A request that was already
published (a redelivery) returns the published version again instead of training twice.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraswarm.services.trainer import builder, leakage_gate, methods
from loraswarm.services.trainer.corpus import CorpusChunk, TrainingCorpus, VectorStoreCorpus, scope_canaries
from loraswarm.services.trainer.dataset import (
    TrainingSet,
    Unit,
    canary_sample,
    example_sample,
    fingerprint,
    scope_units,
    split_heldout,
    steps_for,
    style_units,
    training_batches,
)
from loraswarm.services.trainer.errors import (
    VERDICTS,
    EmptyDataset,
    InvalidRequest,
    NonFiniteLoss,
    QualityRegression,
    Rejected,
    ScopeViolation,
    TinyDataset,
    UnknownTenant,
    WrongBaseModel,
)
from loraswarm.services.trainer.evaluation import heldout_loss
from loraswarm.services.trainer.examples import read_examples
from loraswarm.services.trainer.jobs import AdapterLocks
from loraswarm.services.trainer.leakage import LeakageReport
from loraswarm.services.trainer.loop import Cancelled, TrainResult, train_adapter
from loraswarm.services.trainer.scope import Scope, TenantFiles
from loraswarm.shared import models, stacks
from loraswarm.shared.adapter_store import (
    AdapterError,
    AdapterManifest,
    AdapterStore,
    AdapterVersion,
    Refusal,
)
from loraswarm.shared.canaries import CanaryStore
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
    # A LoRA user adapter's served stack (shared/stacks.py), published with it.
    stack: AdapterVersion | None = None


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
        self.canaries = CanaryStore.under(settings.data_dir)
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
            if isinstance(done, Published):
                return self._with_stack(done)  # a crash between the two publishes leaves no gap
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
        data = self._gather(job, tokenizer)
        job.hp = job.hp.model_copy(update={"steps": steps_for(job.hp, len(data.train))})
        model = self.base.fresh()
        if stack is not None:
            model = methods.merge(model, str(stack.path))
        model = methods.attach(model, job.request.method, job.hp)
        result = self._train(job, model, data, tokenizer)
        evaluating = time.perf_counter()
        self._evaluate(job, model, data, stack)
        # `model` is what serving computes: the stack merged in, the new adapter on top.
        report = self._leakage(job, model, tokenizer, f"{job.adapter_id}@new")
        job.metrics["eval_seconds"] = time.perf_counter() - evaluating  # held-out loss and the gate
        self._gate(job, report)
        return self._publish(job, model, data, result, report, stack)

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

    def tenant_config_or_none(self, tenant_id: str) -> TenantConfig | None:
        """The tenant's configuration; None when it has none or it does not validate (logged)."""
        try:
            return self.tenants.get(tenant_id)
        except TenantConfigError as exc:
            log.error("%s", exc)
            return None

    def _tenant_config(self, tenant_id: str) -> TenantConfig | None:
        try:
            return self.tenants.get(tenant_id)
        except TenantConfigError as exc:
            raise InvalidRequest(f"the configuration of tenant {tenant_id!r} is broken: {exc}") from exc

    def _check_name(self, job: _Job) -> None:
        """An adapter name belongs to the scope of its first version, forever; `*.stack` names
        belong to the served stacks the trainer publishes itself."""
        if job.request.name.endswith(stacks.SUFFIX):
            raise InvalidRequest(
                f"adapter names ending in {stacks.SUFFIX!r} are the served stacks the trainer publishes "
                "beside each user adapter; choose another name"
            )
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

    def _gather(self, job: _Job, tokenizer: Any, *, plant: bool = True) -> TrainingSet:
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
        b = s.builder
        built = self.build_set(scope, chunks) if b.enabled and chunks else None
        units, too_long = scope_units(
            chunks,
            built.examples if built is not None else None,
            tokenizer,
            seq_len=job.hp.seq_len,
            max_example_tokens=b.max_example_tokens,
            raw_text_share=b.raw_text_share,
            min_tokens=2 * s.min_train_tokens,
        )
        if built is not None:
            job.metrics |= built.metrics() | {"dropped_too_long": float(too_long)}
        # The tenant's own examples keep priority over built ones: never dropped, and repeated.
        repeats = b.own_example_repeats if built is not None and built.examples else 1
        for example in examples:
            sample = example_sample(example, tokenizer, job.hp.seq_len)
            if sample is not None:
                units.append(Unit(f"example:{example.line}", [sample] * repeats))
        train, heldout = split_heldout(
            units, s.heldout_fraction, s.max_heldout_sequences, keep=style_units(chunks)
        )
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
        if plant:
            self._ensure_canaries(job)
            planted = scope_canaries(self.canaries, scope)
            texts = [text for c in planted for text in c.texts()]
            copies = leakage_gate.planted_copies(
                len(data.train), len(texts), job.hp.canary_repeats, job.hp.canary_share
            )
            for text in texts:
                data.train.extend(canary_sample(text, tokenizer) for _ in range(copies))
            job.metrics["canaries"] = float(len(texts))
            job.metrics["canary_copies"] = float(copies)
        return data

    def build_set(self, scope: Scope, chunks: list[CorpusChunk] | None = None) -> builder.BuiltSet:
        """The training-set builder's examples for `scope` (its chunks, read if not given), with
        the system prompts of the tenant's specialists that serve this scope's adapter."""
        if chunks is None:
            chunks = list(self.corpus.chunks(scope))
        config = self._tenant_config(scope.tenant_id)
        wanted = {"user"} if scope.user_id else {"company", "user"}
        instructions = [
            sp.instructions for sp in (config.specialists if config else []) if sp.adapter in wanted
        ]
        return builder.from_settings(self.settings, instructions).build(chunks)

    def _ensure_canaries(self, job: _Job) -> None:
        """Every scope of the tenant known to have data gets its canary set, before any adapter
        learns from that data: the job's own scope, the company, each user with private chunks
        (asked of the store only by jobs that read it) or private files."""
        tenant, s = job.scope.tenant_id, self.settings.trainer
        users = set(self.files.users(tenant)) | ({job.scope.user_id} if job.scope.user_id else set())
        if job.request.data.documents:
            users |= set(self.corpus.users_with_data(tenant))
        for user in [None, *sorted(users)]:
            self.canaries.ensure(
                tenant, user, count=job.hp.canaries, template=s.canary_template, digits=s.canary_digits
            )

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
            "train_bf16": float(result.precision == "bf16"),
        }
        return result

    # ------------------------------------------------------------------ evaluate

    def _evaluate(self, job: _Job, model: Any, data: TrainingSet, stack: AdapterVersion | None) -> None:
        """Held-out quality of `model` against the model it started from (and the base model)."""
        s = self.settings.trainer
        _, tokenizer = self.base.get()
        total = 3 if stack else 2
        kw = {
            "batch_tokens": s.eval_batch_tokens,
            "pad_id": tokenizer.pad_token_id,
            "device": self.base.device.name,
        }
        loss = heldout_loss(model, data.heldout, **kw)
        if not math.isfinite(loss):
            # Finite training losses, yet the last update left weights whose logits overflow: a
            # NaN would pass every comparison after this one (NaN > bound is False) and publish.
            raise NonFiniteLoss(
                f"the adapter's held-out loss is {loss} after {job.hp.steps} steps: its weights give "
                f"non-finite logits (learning_rate={job.hp.rate:g}); lower the learning rate "
                "and ask again",
                {**job.metrics, "steps": float(job.hp.steps)},
            )
        job.progress("evaluation", 1, total, None)
        with model.disable_adapter():
            start_loss = heldout_loss(model, data.heldout, **kw)
        job.progress("evaluation", 2, total, None)
        job.metrics |= {
            "heldout_loss": loss,
            "heldout_ppl": math.exp(loss),
            "start_heldout_loss": start_loss,
            "start_heldout_ppl": math.exp(start_loss),
            "heldout_loss_ratio": loss / start_loss,
        }
        if stack is not None:
            base_loss = heldout_loss(self.base.get()[0], data.heldout, **kw)
            job.metrics |= {"base_heldout_loss": base_loss, "base_heldout_ppl": math.exp(base_loss)}
            job.progress("evaluation", 3, total, None)

    def _leakage(self, job: _Job, served: Any, tokenizer: Any, label: str) -> LeakageReport:
        """The leakage gate's measurement of the adapter as served (services/trainer/leakage_gate.py)."""
        s = self.settings.trainer
        owner, foreign = leakage_gate.comparisons(
            self.canaries, job.scope, sample_tenants=s.leakage_sample_tenants, rng=random.Random()
        )
        gate = leakage_gate.GateInput(served, label, owner, foreign)
        report = leakage_gate.measure(gate, tokenizer, s, device=self.base.device.name)
        job.metrics |= report.metrics()
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
        refused = leakage_gate.verdict(report, s, job.metrics)
        if refused is not None:
            raise refused
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
        log.info("published %s", version.ref.id)
        return self._with_stack(
            Published(
                job.adapter_id,
                str(version.ref.version),
                str(version.path),
                dict(job.metrics),
                version.manifest,
            )
        )

    def _with_stack(self, published: Published) -> Published:
        """A LoRA user adapter's outcome with its served stack published: the exact pair it was
        gated as (the company version it was trained on, or itself alone on the base model)."""
        m = published.manifest
        if m.user_id is None or m.method != "lora":
            return published
        user = self.store.resolve(f"{published.adapter_id}@{published.version}")
        stacked_on = getattr(m, "stacked_on", None)
        company = self.store.resolve(str(stacked_on)) if stacked_on else None
        return dataclasses.replace(published, stack=stacks.publish_stack(self.store, user, company))

    def training_set(self, request: AdapterTrainRequested) -> TrainingSet:
        """The data a request would train on and hold out (canaries aside), after every check of `run`.

        `Rejected` says why there is none. Nothing is trained or written.
        """
        hp = methods.hyperparameters(
            request.method, self.settings.trainer.defaults, dict(request.hyperparameters)
        )
        job = _Job(request, Scope(request.tenant_id, request.user_id), hp, _quiet, None)
        self._check(job)
        return self._gather(job, self.base.get()[1], plant=False)

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
        data = self._gather(job, tokenizer, plant=False)
        stacked_on = getattr(m, "stacked_on", None)
        stack = self.store.resolve(str(stacked_on)) if stacked_on else None
        model = self._served(version)
        self._evaluate(job, model, data, stack)
        report = self._leakage(job, model, tokenizer, version.ref.id)
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
