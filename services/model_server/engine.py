"""Continuous batching with a heterogeneous batch: many tenants' adapters in one forward pass.

One engine thread owns the model. Its loop, until stopped:

1. drop sequences whose client went away (their slots free up at once);
2. admit waiting requests while the batch has room (rows, token budget) and prefill them together
   in one forward pass; each gets its first token right away;
3. run one decode step for every running sequence: one token each, in one forward pass, each row
   with its own position, KV-cache slot and adapters (LoRA deltas in the linear layers, see
   lora.py; LLaMA-Adapter prompts in the attention layers, see adaption_prompt.py);
4. finished sequences leave; the last rows move into their slots.

New requests therefore join between decode steps and never wait for the batch to drain. Every
token is handed to its request's `emit` callback as soon as it is chosen (the HTTP layer turns
that into SSE events); `emit` must be thread-safe and must not block.

Shapes in comments: B running rows, T tokens per row in this pass, V vocabulary, W attention width.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from loraswarm.services.model_server.adapters import LoadedAdapter
from loraswarm.services.model_server.adaption_prompt import PromptContext, PromptSlots, PromptTarget
from loraswarm.services.model_server.detokenize import IncrementalDetokenizer, generated_text
from loraswarm.services.model_server.grammar import GrammarState
from loraswarm.services.model_server.kv_cache import SlotKVCache
from loraswarm.services.model_server.lora import BatchedLoraLinear, LoraContext, LoraSlots
from loraswarm.services.model_server.sampling import Choice, RowState, SamplingParams, choose, top_tokens
from loraswarm.shared import torch_threads

log = logging.getLogger("loraswarm.model_server.engine")

FinishReason = Literal["length", "eos_token", "stop_sequence"]


# ---------------------------------------------------------------- what goes in and comes out


@dataclass(frozen=True)
class TokenInfo:
    id: int
    text: str
    logprob: float
    special: bool


@dataclass(frozen=True)
class PrefillToken:
    id: int
    text: str
    logprob: float | None


@dataclass(frozen=True)
class End:
    finish_reason: FinishReason
    generated_text: str
    generated_tokens: int
    seed: int | None
    input_length: int
    queued_at: float  # time.monotonic() when submitted
    started_at: float  # when its prefill began


@dataclass(frozen=True)
class Prefilled:
    tokens: list[PrefillToken]


@dataclass(frozen=True)
class Generated:
    token: TokenInfo
    top_tokens: list[TokenInfo]
    end: End | None  # set on the last token
    batch_size: int = 1  # rows in the forward pass that produced this token
    logits: torch.Tensor | None = None  # (V,) raw logits, when the request asked to record them


@dataclass(frozen=True)
class Failed:
    message: str
    error_type: str = "generation"


EngineEvent = Prefilled | Generated | Failed


@dataclass
class GenerationRequest:
    input_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    stop_sequences: list[str]
    emit: Callable[[EngineEvent], None]
    adapters: tuple[LoadedAdapter, ...] = ()
    grammar: GrammarState | None = None
    top_n_tokens: int = 0
    prefill_details: bool = False
    record_logits: bool = False  # tests compare raw logits across batch compositions
    queued_at: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class QueueFull(Exception):
    """The queue is full (TGI answers 429 `overloaded`)."""


# ---------------------------------------------------------------- one running sequence


@dataclass
class _Sequence:
    request: GenerationRequest
    ids: list[int]  # prompt + generated
    generated: list[int]
    length: int  # positions in the KV cache
    detok: IncrementalDetokenizer
    generator: torch.Generator | None
    started_at: float
    output_tail: str = ""
    done: bool = False

    @property
    def prompt_length(self) -> int:
        return len(self.request.input_ids)


@dataclass
class EngineStats:
    steps: int = 0
    prefills: int = 0
    tokens: int = 0
    batch_size: int = 0
    queue_size: int = 0
    step_seconds: float = 0.0
    prefill_seconds: float = 0.0
    prompt_tokens: int = 0  # prompt tokens prefilled
    prefill_padding: int = 0  # positions computed only to pad a prefill pass's prompts to one width
    threads: int = 0  # torch threads of the engine's forward passes


class BatchingEngine:
    """Owns the model and the KV cache; runs the batch loop in its own thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        lora_modules: dict[str, BatchedLoraLinear],
        lora_context: LoraContext,
        *,
        device: str,
        dtype: torch.dtype,
        max_batch_size: int,
        max_batch_total_tokens: int,
        max_prefill_tokens: int,
        max_queued: int,
        eos_token_ids: set[int],
        waiting_served_ratio: float = 0.0,
        max_waiting_steps: int = 0,
        threads: int = 0,
        prompt_context: PromptContext | None = None,
        prompt_target: PromptTarget | None = None,
    ) -> None:
        self.model = model
        self.threads = threads
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.tokenizer = tokenizer
        self.lora_modules = lora_modules
        self.lora_context = lora_context
        self.device = device
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.max_batch_total_tokens = max_batch_total_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.max_queued = max_queued
        self.waiting_served_ratio = waiting_served_ratio
        self.max_waiting_steps = max_waiting_steps
        self._steps_waited = 0
        self.eos_token_ids = eos_token_ids
        self.special_ids = set(tokenizer.all_special_ids)
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.cache = SlotKVCache(
            config.num_hidden_layers, config.num_key_value_heads, head_dim, device, dtype
        )
        self.stats = EngineStats()
        self._waiting: deque[GenerationRequest] = deque()
        self._running: list[_Sequence] = []
        self.lora = LoraSlots(lora_modules, device, dtype)  # row i's adapters live in slot i
        # LLaMA-Adapter prompts, when the model's attention layers carry the hooks (install()).
        self.prompt_context = prompt_context
        self.prompts = PromptSlots(prompt_target) if prompt_target is not None else None
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ API (any thread)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="model-server-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; `QueueFull` when running + waiting would pass the limit."""
        with self._wake:
            if len(self._waiting) + len(self._running) >= self.max_queued:
                raise QueueFull("Model is overloaded")
            self._waiting.append(request)
            self.stats.queue_size = len(self._waiting)
            self._wake.notify()

    @property
    def in_flight(self) -> int:
        return len(self._waiting) + len(self._running)

    # ------------------------------------------------------------------ by hand (benches)

    def prefill_by_hand(self, requests: list[GenerationRequest]) -> None:
        """Prefill `requests` into the running batch in the caller's thread (`loraswarm bench
        decode`); only while the engine's own thread is not started."""
        if self._thread is not None:
            raise RuntimeError("the engine's thread is running: submit() instead")
        self._prefill(requests)

    def decode_by_hand(self) -> int:
        """One decode step of the running batch in the caller's thread; the rows it decoded."""
        if self._thread is not None:
            raise RuntimeError("the engine's thread is running: submit() instead")
        rows = len(self._running)
        if rows:
            self._decode()
        return rows

    def clear_by_hand(self) -> None:
        """End every running row without emitting anything and free the cache (between bench runs)."""
        if self._thread is not None:
            raise RuntimeError("the engine's thread is running")
        self._running = []
        self.cache.release()
        self.lora.clear()
        if self.prompts is not None:
            self.prompts.clear()

    # ------------------------------------------------------------------ the loop (engine thread)

    def _loop(self) -> None:
        # In the engine's own thread: see shared/torch_threads.py for why not once at load.
        self.stats.threads = torch_threads.use(self.threads)
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._stop and not self._waiting and not self._running:
                        self.cache.release()
                        self.lora.clear()
                        if self.prompts is not None:
                            self.prompts.clear()
                        self._wake.wait()
                    if self._stop:
                        break
                    self._drop_cancelled_waiting()
                    newcomers = self._admit()
                    self.stats.queue_size = len(self._waiting)
                try:
                    self._drop_cancelled_running()
                    if newcomers:
                        self._prefill(newcomers)
                    if self._running:
                        self._decode()
                except Exception as exc:  # a failed step fails its sequences, never the server
                    log.exception("batch step failed")
                    message = f"Request failed during generation: {type(exc).__name__}: {exc}"
                    running = {id(s.request) for s in self._running}
                    for request in newcomers:
                        if id(request) not in running:  # failed in its own prefill
                            request.emit(Failed(message))
                    self._fail_all(message)
                self.stats.batch_size = len(self._running)
        self._fail_all("server shutting down")

    def _drop_cancelled_waiting(self) -> None:
        if any(r.cancelled.is_set() for r in self._waiting):
            self._waiting = deque(r for r in self._waiting if not r.cancelled.is_set())

    def _admit(self) -> list[GenerationRequest]:
        """Waiting requests that fit now: rows, KV budget, and one prefill pass's token budget.

        Like TGI's router, a running batch is interrupted for a prefill only when enough requests
        wait (`waiting_served_ratio` of the running ones) or the oldest has waited
        `max_waiting_steps` decode steps: one prefill pass costs about as much as a decode step
        whatever its size, so prefilling arrivals together keeps the batch decoding.
        """
        if self._running and self._waiting and len(self._running) < self.max_batch_size:
            self._steps_waited += 1
            enough = len(self._waiting) >= self.waiting_served_ratio * len(self._running)
            if not enough and self._steps_waited <= self.max_waiting_steps:
                return []
        self._steps_waited = 0
        budget = sum(s.prompt_length + s.request.max_new_tokens for s in self._running)
        prefill_tokens = 0
        admitted: list[GenerationRequest] = []
        while self._waiting and len(self._running) + len(admitted) < self.max_batch_size:
            request = self._waiting[0]
            need = len(request.input_ids) + request.max_new_tokens
            fits_budget = budget + need <= self.max_batch_total_tokens
            fits_prefill = prefill_tokens + len(request.input_ids) <= self.max_prefill_tokens
            if admitted and not (fits_budget and fits_prefill):
                break
            if not admitted and self._running and not fits_budget:
                break  # wait for running sequences to finish
            admitted.append(self._waiting.popleft())
            budget += need
            prefill_tokens += len(request.input_ids)
        return admitted

    # ------------------------------------------------------------------ prefill

    def _prefill(self, requests: list[GenerationRequest]) -> None:
        started = time.monotonic()
        first = len(self._running)
        lengths = [len(r.input_ids) for r in requests]
        width = max(lengths)
        n = len(requests)
        self.cache.reserve(
            first + n, max(width, *(s.length + 1 for s in self._running)) if self._running else width
        )
        ids = torch.zeros(n, width, dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, : lengths[i]] = torch.tensor(r.input_ids)
        ids = ids.to(self.device)
        positions = torch.arange(width, device=self.device).expand(n, width)  # (n, T)
        length_t = torch.tensor(lengths, device=self.device)
        key = torch.arange(width, device=self.device)
        causal = key[None, :] <= key[:, None]  # (T, T)
        mask = causal[None, None] & (key[None, None, None, :] < length_t[:, None, None, None])  # (n, 1, T, T)
        for i, r in enumerate(requests):
            self.lora.assign(first + i, [a.weights for a in r.adapters])
            self._assign_prompt(first + i, r.adapters)
        self.lora_context.batch = self.lora.batch(first, first + n)
        self._set_prompts(first, first + n)
        self.cache.plan_prefill(first, n)
        try:
            hidden = self.decoder(
                input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.cache, use_cache=True
            ).last_hidden_state  # (n, T, hidden)
        finally:
            self.lora_context.batch = None
            self._set_prompts(0, 0)
        last = hidden[torch.arange(n, device=self.device), length_t - 1]  # (n, hidden)
        logits = self.lm_head(last).float()  # (n, V)
        self.stats.prefills += 1
        self.stats.prompt_tokens += sum(lengths)
        self.stats.prefill_padding += n * width - sum(lengths)
        sequences = []
        for i, request in enumerate(requests):
            if request.prefill_details:
                request.emit(Prefilled(self._prefill_tokens(request.input_ids, hidden[i, : lengths[i]])))
            generator = None
            if request.params.sampling:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(request.params.seed)
            sequences.append(
                _Sequence(
                    request=request,
                    ids=list(request.input_ids),
                    generated=[],
                    length=lengths[i],
                    detok=IncrementalDetokenizer.after_prompt(self.tokenizer, request.input_ids),
                    generator=generator,
                    started_at=started,
                )
            )
        self._running.extend(sequences)
        self._advance(sequences, logits)
        self.stats.prefill_seconds += time.monotonic() - started

    def _prefill_tokens(self, input_ids: list[int], hidden: torch.Tensor) -> list[PrefillToken]:
        """TGI's `prefill` details: each prompt token with its logprob given the ones before it."""
        logprobs = torch.log_softmax(self.lm_head(hidden[:-1]).float(), dim=-1)  # (P-1, V)
        targets = torch.tensor(input_ids[1:], device=logprobs.device)
        picked = logprobs.gather(1, targets[:, None])[:, 0].tolist() if len(input_ids) > 1 else []
        tokens = [PrefillToken(input_ids[0], self._text(input_ids[0]), None)]
        tokens += [
            PrefillToken(t, self._text(t), float(lp)) for t, lp in zip(input_ids[1:], picked, strict=True)
        ]
        return tokens

    # ------------------------------------------------------------------ LLaMA-Adapter rows

    def _assign_prompt(self, slot: int, adapters: tuple[LoadedAdapter, ...]) -> None:
        """The row's adaption prompt (at most one; `ModelServer.load_adapters` refuses more), its
        keys and values through the row's LoRA'd k/v projections."""
        prompt = next((a.prompt for a in adapters if a.prompt is not None), None)
        if self.prompts is None:
            if prompt is not None:
                raise RuntimeError("this engine was built without LLaMA-Adapter support")
            return
        self.prompts.assign(slot, prompt, [a.weights for a in adapters] if prompt is not None else ())

    def _set_prompts(self, start: int, stop: int) -> None:
        """What the attention hooks apply in the next forward pass (rows [start, stop)); (0, 0): nothing."""
        if self.prompt_context is None or self.prompts is None:
            return
        self.prompt_context.batch = self.prompts.batch(start, stop) if stop > start else None
        self.prompt_context.queries.clear()

    # ------------------------------------------------------------------ decode

    def _decode(self) -> None:
        started = time.perf_counter()
        rows = self._running
        b = len(rows)
        positions = torch.tensor([s.length for s in rows], device=self.device)  # (B,)
        width = int(positions.max()) + 1
        self.cache.reserve(b, width)
        ids = torch.tensor([[s.ids[-1]] for s in rows], device=self.device)  # (B, 1)
        key = torch.arange(width, device=self.device)
        mask = (key[None, :] <= positions[:, None])[:, None, None, :]  # (B, 1, 1, W)
        self.lora_context.batch = self.lora.batch(0, b)
        self._set_prompts(0, b)
        self.cache.plan_decode(positions, width)
        try:
            hidden = self.decoder(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions[:, None],
                cache=self.cache,
                use_cache=True,
            ).last_hidden_state  # (B, 1, hidden)
        finally:
            self.lora_context.batch = None
            self._set_prompts(0, 0)
        logits = self.lm_head(hidden[:, -1]).float()  # (B, V)
        for s in rows:
            s.length += 1
        self._advance(list(rows), logits)
        self.stats.steps += 1
        self.stats.step_seconds += time.perf_counter() - started

    # ------------------------------------------------------------------ tokens out

    def _advance(self, sequences: list[_Sequence], logits: torch.Tensor) -> None:
        """Choose each sequence's next token from its logits row, emit it, retire finished ones."""
        states = [
            RowState(
                s.request.params,
                s.ids,
                s.generator,
                s.request.grammar.allowed() if s.request.grammar is not None else None,
                s.prompt_length,
            )
            for s in sequences
        ]
        choices = choose(logits, states)
        for i, (s, choice) in enumerate(zip(sequences, choices, strict=True)):
            self._emit_token(s, choice, logits[i] if s.request.record_logits else None, len(sequences))
        self._retire()

    def _emit_token(self, s: _Sequence, choice: Choice, logits: torch.Tensor | None, batch_size: int) -> None:
        token = choice.token
        s.ids.append(token)
        s.generated.append(token)
        self.stats.tokens += 1
        grammar = s.request.grammar
        if grammar is not None and not grammar.accept(token):
            log.warning("grammar refused token %d; ending the sequence", token)
        text = s.detok.push(token)
        s.output_tail = (s.output_tail + text)[-256:]
        reason = self._finish_reason(s, token, text)
        end = None
        if reason is not None:
            s.done = True
            end = End(
                finish_reason=reason,
                generated_text=generated_text(self.tokenizer, s.request.input_ids, s.generated),
                generated_tokens=len(s.generated),
                seed=s.request.params.seed if s.request.params.sampling else None,
                input_length=s.prompt_length,
                queued_at=s.request.queued_at,
                started_at=s.started_at,
            )
        n = s.request.top_n_tokens
        tops = [
            TokenInfo(t, self._text(t), lp, t in self.special_ids) for t, lp in top_tokens(choice.logprobs, n)
        ]
        info = TokenInfo(token, text, choice.logprob, token in self.special_ids)
        s.request.emit(Generated(info, tops, end, batch_size, logits.clone() if logits is not None else None))

    def _finish_reason(self, s: _Sequence, token: int, text: str) -> FinishReason | None:
        # TGI's order: length first, then end of sequence, then stop sequences.
        if len(s.generated) >= s.request.max_new_tokens:
            return "length"
        if token in self.eos_token_ids:
            return "eos_token"
        grammar = s.request.grammar
        if grammar is not None and grammar.finished:
            return "eos_token"
        if text and any(s.output_tail.endswith(stop) for stop in s.request.stop_sequences):
            return "stop_sequence"
        return None

    def _text(self, token: int) -> str:
        return str(self.tokenizer.decode([token], skip_special_tokens=False))

    # ------------------------------------------------------------------ leaving the batch

    def _drop_cancelled_running(self) -> None:
        cancelled = [s for s in self._running if s.request.cancelled.is_set()]
        for s in cancelled:
            s.done = True
        if cancelled:
            self._retire()

    def _retire(self) -> None:
        """Remove finished rows and move the last running rows into the freed slots."""
        if not any(s.done for s in self._running):
            return
        keep = [s for s in self._running if not s.done]
        for slot, s in enumerate(self._running):
            if s.done:
                self.lora.release(slot)
                if self.prompts is not None:
                    self.prompts.release(slot)
        free = [i for i, s in enumerate(self._running[: len(keep)]) if s.done]
        movers = [(i, s) for i, s in enumerate(self._running) if i >= len(keep) and not s.done]
        compacted = list(self._running[: len(keep)])
        for slot, (source, s) in zip(free, movers, strict=True):
            self.cache.move(source, slot, s.length)
            self.lora.move(source, slot)
            if self.prompts is not None:
                self.prompts.move(source, slot)
            compacted[slot] = s
        self._running = compacted
        assert all(not s.done for s in self._running)

    def _fail_all(self, message: str) -> None:
        for s in self._running:
            s.request.emit(Failed(message))
        self._running = []
        self.lora.clear()
        if self.prompts is not None:
            self.prompts.clear()
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
        if self._stop:
            for r in waiting:
                r.emit(Failed(message))
        else:
            self._waiting.extend(waiting)
