"""The serving core: the base model with its wrapped layers, the adapter registry, the engine.

`ModelServer.load(settings)` loads the base model once (CUDA when present; `model_server.dtype`),
wraps its decoder's linear layers for per-row LoRA, hooks its attention layers for per-row
LLaMA-Adapter prompts, and starts nothing; `start()` starts the
engine thread. The HTTP routes call `prepare` (validation already done: adapters and grammar
resolved, off the event loop) and then `stream` or `complete`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from loraswarm import __version__
from loraswarm.services.model_server import adaption_prompt
from loraswarm.services.model_server.adapters import AdapterRegistry, LoadedAdapter, LoraTarget, load_adapter
from loraswarm.services.model_server.engine import (
    BatchingEngine,
    End,
    EngineEvent,
    Failed,
    Generated,
    GenerationRequest,
    Prefilled,
    PrefillToken,
    QueueFull,
    TokenInfo,
)
from loraswarm.services.model_server.errors import (
    AdapterMissing,
    AdapterUnusable,
    GenerationFailed,
    IncompleteGeneration,
    Overloaded,
    ValidationFailed,
)
from loraswarm.services.model_server.grammar import GrammarCompiler, GrammarError, GrammarSpec
from loraswarm.services.model_server.lora import LoraContext, wrap_linear_layers
from loraswarm.services.model_server.metrics import ServerMetrics
from loraswarm.services.model_server.validation import ValidRequest
from loraswarm.shared import models
from loraswarm.shared.adapter_store import AdapterNotFound, AdapterStore, InvalidAdapter
from loraswarm.shared.settings import Settings

log = logging.getLogger("loraswarm.model_server")


@dataclass(frozen=True)
class Prepared:
    """A validated request with its adapters loaded and its grammar compiled."""

    valid: ValidRequest
    adapters: tuple[LoadedAdapter, ...]
    grammar: Any  # xgrammar CompiledGrammar
    tenant: str | None
    record_logits: bool = False


@dataclass
class Generation:
    """A finished generation: what `/generate` answers with."""

    tokens: list[TokenInfo] = field(default_factory=list)
    top_tokens: list[list[TokenInfo]] = field(default_factory=list)
    prefill: list[PrefillToken] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)  # rows of the forward pass behind each token
    end: End | None = None
    best_of: list[Generation] = field(default_factory=list)  # every sample, when `best_of` > 1

    @property
    def logprob_sum(self) -> float:
        return sum(t.logprob for t in self.tokens)


class ModelServer:
    def __init__(
        self,
        settings: Settings,
        model: Any,
        tokenizer: Any,
        device: models.Device,
        model_sha: str,
    ) -> None:
        self.settings = settings
        self.limits = settings.model_server
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.model_id = settings.base_model
        self.model_sha = model_sha
        self.version = __version__
        context = LoraContext()
        self.lora_modules = wrap_linear_layers(model, context)
        target = LoraTarget(
            self.lora_modules, device.name, device.dtype, self.limits.max_lora_rank, base_model_hash=model_sha
        )
        # After the wrapping: the hooks read q_proj's output with the row's LoRA delta in it.
        prompt_context = adaption_prompt.PromptContext()
        adaption_prompt.install(model, prompt_context)
        self.prompt_target = adaption_prompt.PromptTarget.of(
            model.config, self.lora_modules, device.name, device.dtype
        )
        self.registry = AdapterRegistry(
            AdapterStore.under(settings.data_dir),
            lambda version: load_adapter(version, target, self.prompt_target),
            max_resident=self.limits.max_resident_adapters,
            max_bytes=int(self.limits.max_resident_adapter_mb * 2**20),
            on_load=lambda adapter: self.metrics.adapter_load_duration.observe(adapter.load_ms / 1000),
        )
        vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.grammars = GrammarCompiler(tokenizer, vocab_size)
        self.engine = BatchingEngine(
            model,
            tokenizer,
            self.lora_modules,
            context,
            device=device.name,
            dtype=device.dtype,
            max_batch_size=self.limits.max_batch_size,
            max_batch_total_tokens=self.limits.max_batch_total_tokens,
            max_prefill_tokens=self.limits.max_prefill_tokens,
            max_queued=self.limits.max_concurrent_requests,
            eos_token_ids=_eos_ids(model, tokenizer),
            waiting_served_ratio=self.limits.waiting_served_ratio,
            max_waiting_steps=self.limits.max_waiting_steps,
            threads=self.limits.threads,
            prompt_context=prompt_context,
            prompt_target=self.prompt_target,
        )
        self.metrics = ServerMetrics(self._live_metrics)
        self._started = False

    @classmethod
    def load(cls, settings: Settings) -> ModelServer:
        """Load the base model (`loraswarm models pull` first) and build the server around it."""
        device = models.serving_device(settings)
        model, tokenizer = models.load(settings, device=device)
        path = models.resolve(settings)
        return cls(settings, model, tokenizer, device, models.model_hash(path))

    def start(self) -> None:
        if not self._started:
            self.engine.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self.engine.stop()
            self._started = False

    @property
    def healthy(self) -> bool:
        thread = self.engine._thread
        return self._started and thread is not None and thread.is_alive()

    # ------------------------------------------------------------------ preparing a request

    async def prepare(
        self,
        valid: ValidRequest,
        adapter_ids: tuple[str, ...],
        tenant: str | None,
        *,
        record_logits: bool = False,
    ) -> Prepared:
        """Load the request's adapters and compile its grammar, off the event loop."""
        adapters = await asyncio.to_thread(self.load_adapters, adapter_ids)
        grammar = await asyncio.to_thread(self.compile_grammar, valid.grammar) if valid.grammar else None
        return Prepared(valid, adapters, grammar, tenant, record_logits)

    def load_adapters(self, adapter_ids: tuple[str, ...]) -> tuple[LoadedAdapter, ...]:
        loaded = []
        for adapter_id in adapter_ids:
            try:
                adapter = self.registry.get(adapter_id)
            except AdapterNotFound as exc:
                raise AdapterMissing(str(exc)) from exc
            except InvalidAdapter as exc:
                raise AdapterUnusable(str(exc)) from exc
            loaded.append(adapter)
        prompts = [a.id for a in loaded if a.method == "llama_adapter"]
        if len(prompts) > 1:
            # peft cannot stack adaption prompts, so no such pair was trained together.
            raise AdapterUnusable(
                f"{' and '.join(prompts)} are both LLaMA-Adapters; a stack may hold at most one "
                "(with any LoRA adapters)"
            )
        return tuple(loaded)

    def compile_grammar(self, spec: GrammarSpec) -> Any:
        try:
            return self.grammars.compile(spec)
        except GrammarError as exc:
            raise ValidationFailed(str(exc)) from exc

    # ------------------------------------------------------------------ running it

    async def stream(
        self, prepared: Prepared, *, seed: int | None = None
    ) -> AsyncGenerator[EngineEvent, None]:
        """The engine's events for one sequence, as they come; leaving early frees its slot."""
        valid = prepared.valid
        params = valid.params if seed is None else replace(valid.params, seed=seed)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[EngineEvent] = asyncio.Queue()

        def emit(event: EngineEvent) -> None:
            # RuntimeError: the event loop is gone (shutdown), nobody is listening.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, event)

        request = GenerationRequest(
            input_ids=valid.input_ids,
            params=params,
            max_new_tokens=valid.max_new_tokens,
            stop_sequences=valid.stop,
            emit=emit,
            adapters=prepared.adapters,
            grammar=self.grammars.matcher(prepared.grammar) if prepared.grammar is not None else None,
            top_n_tokens=valid.top_n_tokens,
            prefill_details=valid.decoder_input_details,
            record_logits=prepared.record_logits,
        )
        self.metrics.max_new_tokens.observe(valid.max_new_tokens)
        self.metrics.input_length.observe(valid.input_length)
        try:
            self.engine.submit(request)
        except QueueFull as exc:
            raise Overloaded() from exc
        try:
            while True:
                event = await queue.get()
                yield event
                if isinstance(event, Failed) or (isinstance(event, Generated) and event.end is not None):
                    return
        finally:
            request.cancel()  # a no-op once finished; otherwise the client left and the slot frees

    async def complete(self, prepared: Prepared, *, seed: int | None = None) -> Generation:
        """Run one sequence to its end."""
        result = Generation()
        async for event in self.stream(prepared, seed=seed):
            if isinstance(event, Failed):
                raise GenerationFailed(event.message)
            if isinstance(event, Prefilled):
                result.prefill = event.tokens
            elif isinstance(event, Generated):
                result.tokens.append(event.token)
                result.top_tokens.append(event.top_tokens)
                result.batch_sizes.append(event.batch_size)
                if event.logits is not None:
                    result.logits.append(event.logits)
                result.end = event.end
        if result.end is None:
            raise IncompleteGeneration()
        return result

    def record(self, prepared: Prepared, generation: Generation, received_at: float) -> None:
        """Metrics of a request answered in full (TGI's histograms, per-tenant tokens)."""
        end = generation.end
        assert end is not None
        now = time.monotonic()
        inference = now - end.started_at
        m = self.metrics
        m.counters.inc("success")
        m.duration.observe(now - received_at)
        m.validation_duration.observe(max(end.queued_at - received_at, 0.0))
        m.queue_duration.observe(max(end.started_at - end.queued_at, 0.0))
        m.inference_duration.observe(inference)
        m.time_per_token.observe(inference / max(end.generated_tokens, 1))
        m.generated_tokens.observe(end.generated_tokens)
        m.count_tokens(prepared.tenant, end.input_length, end.generated_tokens)

    def on_adapter_published(self, adapter_id: str) -> None:
        """`adapter.published`: forget older versions, warm the new one. A bad artifact is logged, not raised."""
        try:
            loaded = self.registry.on_published(adapter_id)
        except (AdapterNotFound, InvalidAdapter) as exc:
            log.warning("adapter.published %s not loaded: %s", adapter_id, exc)
            return
        if loaded is not None:
            log.info("adapter %s loaded in %.1f ms", loaded.id, loaded.load_ms)

    def _live_metrics(self) -> dict[str, float]:
        stats = self.registry.stats
        return {
            "tgi_queue_size": self.engine.stats.queue_size,
            "tgi_batch_current_size": self.engine.stats.batch_size,
            "adapters_resident": len(self.registry.resident()),
            "adapters_resident_bytes": self.registry.resident_bytes(),
            "adapter_loads": stats.loads,
            "adapter_evictions": stats.evictions,
        }


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(int(i) for i in configured)
    return ids
