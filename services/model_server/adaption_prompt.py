"""LLaMA-Adapter rows in the heterogeneous batch: each row's adaption prompt and gate, per adapted layer.

peft's `AdaptionPrompt` (Zhang et al. 2023) for Llama-architecture models wraps the top
`adapter_layers` attention modules. In such a layer, with the layer's input h and its usual
attention output `attn(h)` (after `o_proj`), it adds

    q   = rope(q_proj(h))                       # (B, H, T, d)   the layer's own rotated queries
    k_p = k_proj(P), v_p = v_proj(P)            # (B, KV, L, d)  P: the learned prompt (L, hidden);
                                                #                no rotary on the prompt's keys
    k_p, v_p repeated to H heads (GQA: each KV head serves H / KV query heads, as repeat_interleave)
    s   = softmax_fp32(q k_p^T / sqrt(d))       # (B, H, T, L)   its own softmax, over the prompt only
    out = attn(h) + o_proj((gate * s) v_p)      # gate: a learned scalar, zero at initialisation

Here that is computed for all rows at once. Per adapted layer, `PromptSlots` keeps every running
row's prompt keys, values and gate in one slot (like the KV cache and `LoraSlots`): keys and values
(slots, KV, L_max, d), a validity mask (slots, L_max) for rows with a shorter prompt, and the gate
(slots,). A row without a prompt in a layer has gate 0 and every position masked, so it gets
exactly `+ 0`: LoRA rows and base rows are untouched. Forward hooks on the attention modules (and
on their `q_proj`, to reuse the queries the layer computed instead of computing them again) add
the term; the model's modules and names stay as they are.

Stacking with LoRA: a row's LoRA deltas apply in the projections as usual, and its prompt's keys
and values are computed through the same LoRA'd `k_proj` / `v_proj` (the queries and `o_proj`
are the LoRA'd layers already). That is exactly what peft computes for an `AdaptionPrompt` on a
model with the LoRA merged into its weights, which is how the trainer trains a user LLaMA-Adapter
over a company LoRA. Two LLaMA-Adapters in one stack are refused: peft cannot stack adaption
prompts either, so no such pair was ever trained.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from loraswarm.services.model_server.lora import BatchedLoraLinear, LoraWeights
from loraswarm.shared.adapter_store import AdapterVersion, InvalidAdapter

_KEY = re.compile(
    r"^base_model\.model\.model\.layers\.(?P<layer>\d+)\.self_attn\.adaption_(?P<part>prompt|gate)$"
)
_ARCHITECTURES = ("llama", "mistral")  # the model types whose attention peft adapts this way


@dataclass(frozen=True)
class PromptLayer:
    """One adapted layer of one adapter, ready for the slots."""

    prompt: torch.Tensor  # (L, hidden)  the learned prompt, kept for LoRA'd k/v projections
    key: torch.Tensor  # (KV, L, d)  k_proj(prompt) through the base weights
    value: torch.Tensor  # (KV, L, d)  v_proj(prompt)
    gate: float

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.prompt, self.key, self.value))


@dataclass(frozen=True)
class AdaptionPrompt:
    """A loaded LLaMA-Adapter: its layers (index -> prompt), all of one length."""

    layers: dict[int, PromptLayer]
    length: int

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers.values())


@dataclass(frozen=True)
class PromptTarget:
    """What the served model offers LLaMA-Adapters: its attention geometry and k/v projections."""

    model_type: str
    num_layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    projections: dict[str, BatchedLoraLinear]  # the wrapped linear layers, by module path
    device: str
    dtype: torch.dtype
    max_length: int = 512

    @classmethod
    def of(
        cls, config: Any, projections: dict[str, BatchedLoraLinear], device: str, dtype: torch.dtype
    ) -> PromptTarget:
        heads = int(config.num_attention_heads)
        return cls(
            model_type=str(config.model_type),
            num_layers=int(config.num_hidden_layers),
            hidden_size=int(config.hidden_size),
            heads=heads,
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
            projections=projections,
            device=device,
            dtype=dtype,
        )

    def k_proj(self, layer: int) -> BatchedLoraLinear:
        return self.projections[f"model.layers.{layer}.self_attn.k_proj"]

    def v_proj(self, layer: int) -> BatchedLoraLinear:
        return self.projections[f"model.layers.{layer}.self_attn.v_proj"]


# ---------------------------------------------------------------- loading one adapter


def read_prompt(version: AdapterVersion, target: PromptTarget) -> AdaptionPrompt:
    """A stored peft AdaptionPrompt adapter, checked against the served model; `InvalidAdapter` says why not."""
    label = version.ref.id
    if target.model_type not in _ARCHITECTURES:
        raise InvalidAdapter(
            f"adapter {label} is a LLaMA-Adapter; this server's base model ({target.model_type}) is not a "
            f"Llama-architecture model ({', '.join(_ARCHITECTURES)}), whose attention it adapts"
        )
    # peft groups query heads per KV head as hidden // kv_dim; where that is not the model's own
    # grouping, peft computes something this server would not reproduce.
    kv_dim = target.kv_heads * target.head_dim
    if target.hidden_size % kv_dim or target.heads // (target.hidden_size // kv_dim) != target.kv_heads:
        raise InvalidAdapter(
            f"adapter {label}: peft's LLaMA-Adapter groups heads differently from this base model's GQA"
        )
    config = _read_config(version, label)
    length, layers = int(config["adapter_len"]), int(config["adapter_layers"])
    if layers > target.num_layers:
        raise InvalidAdapter(
            f"adapter {label} adapts {layers} layers, but the served base model has {target.num_layers} "
            "(was it trained on another base model?)"
        )
    if length > target.max_length:
        raise InvalidAdapter(
            f"adapter {label}: adapter_len {length} is above this server's limit {target.max_length}"
        )
    tensors = _read_tensors(version, label)
    first = target.num_layers - layers  # peft adapts the top `adapter_layers` layers
    expected = {
        f"base_model.model.model.layers.{i}.self_attn.adaption_{part}"
        for i in range(first, target.num_layers)
        for part in ("prompt", "gate")
    }
    unexpected = sorted(set(tensors) - expected)
    if unexpected:
        raise InvalidAdapter(
            f"adapter {label}: unexpected tensor {unexpected[0]!r}; a LLaMA-Adapter for this base model "
            f"holds adaption_prompt and adaption_gate of layers {first}..{target.num_layers - 1}"
        )
    missing = sorted(expected - set(tensors))
    if missing:
        raise InvalidAdapter(f"adapter {label}: {missing[0]} is missing (adapter_layers={layers})")
    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        assert match is not None  # every key is one of `expected`
        by_layer.setdefault(int(match["layer"]), {})[match["part"]] = tensor
    return AdaptionPrompt(
        {i: _layer(i, parts, length, target, label) for i, parts in sorted(by_layer.items())}, length
    )


def _layer(
    index: int, parts: dict[str, torch.Tensor], length: int, target: PromptTarget, label: str
) -> PromptLayer:
    prompt, gate = parts["prompt"], parts["gate"]
    if tuple(prompt.shape) != (1, length, target.hidden_size) or tuple(gate.shape) != (1,):
        raise InvalidAdapter(
            f"adapter {label}: layer {index} has a prompt {tuple(prompt.shape)} and a gate {tuple(gate.shape)}; "
            f"expected (1, {length}, {target.hidden_size}) and (1,) (was it trained on another base model?)"
        )
    if not (torch.isfinite(prompt).all() and torch.isfinite(gate).all()):
        raise InvalidAdapter(f"adapter {label}: layer {index} holds NaN or infinite values")
    # As peft does: the prompt in the model's dtype through the layer's (base) projections.
    p = prompt[0].to(device=target.device, dtype=target.dtype)  # (L, hidden)
    with torch.inference_mode():
        key = _heads(target.k_proj(index).base(p), target)
        value = _heads(target.v_proj(index).base(p), target)
    return PromptLayer(p, key, value, float(gate.to(target.dtype)))


def _heads(projected: torch.Tensor, target: PromptTarget) -> torch.Tensor:
    """(L, KV * d) -> (KV, L, d)."""
    return projected.view(projected.shape[0], target.kv_heads, target.head_dim).transpose(0, 1).contiguous()


def _read_config(version: AdapterVersion, label: str) -> dict[str, Any]:
    path = version.path / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidAdapter(f"adapter {label}: adapter_config.json cannot be read ({exc})") from exc
    if not isinstance(config, dict) or config.get("peft_type") != "ADAPTION_PROMPT":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise InvalidAdapter(
            f"adapter {label}'s manifest says llama_adapter, but its adapter_config.json is a {kind} adapter; "
            "publish it again"
        )
    if config.get("target_modules", "self_attn") != "self_attn":
        raise InvalidAdapter(
            f"adapter {label} adapts {config['target_modules']!r}; this server adapts self_attn only"
        )
    for key in ("adapter_len", "adapter_layers"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidAdapter(f"adapter {label}: adapter_config.json has no valid {key!r}")
    return config


def _read_tensors(version: AdapterVersion, label: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(version.path / "adapter_model.safetensors"), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise InvalidAdapter(
            f"adapter {label}: adapter_model.safetensors cannot be read ({type(exc).__name__}: {exc}); "
            "publish it again, saved with peft's save_pretrained"
        ) from exc


# ---------------------------------------------------------------- the running rows' prompts


@dataclass(frozen=True)
class LayerBatch:
    """Gathered prompts of one layer for the rows of one forward pass."""

    key: torch.Tensor  # (B, KV, L, d)
    value: torch.Tensor  # (B, KV, L, d)
    masked: torch.Tensor  # (B, L) bool: True where a row's prompt is shorter (or absent)
    gate: torch.Tensor  # (B,)


@dataclass
class PromptBatch:
    layers: dict[int, LayerBatch] = field(default_factory=dict)


class PromptContext:
    """Shared by the hooks; the engine sets `batch` before each forward pass (one thread)."""

    def __init__(self) -> None:
        self.batch: PromptBatch | None = None
        self.queries: dict[int, torch.Tensor] = {}  # layer -> its q_proj output, this pass


def _lora_delta(x: torch.Tensor, loras: Sequence[dict[str, LoraWeights]], module: str) -> torch.Tensor | None:
    """The row's LoRA deltas of one module applied to x (L, in), summed over its stack."""
    deltas = [(x @ w.a_t) @ w.b_t for adapter in loras if (w := adapter.get(module)) is not None]
    if not deltas:
        return None
    return torch.stack(deltas).sum(0)


class PromptSlots:
    """The running rows' adaption prompts, one slot per row, laid out like the KV cache."""

    def __init__(self, target: PromptTarget) -> None:
        self.target = target
        self._key: dict[int, torch.Tensor] = {}  # layer -> (slots, KV, L, d)
        self._value: dict[int, torch.Tensor] = {}
        self._masked: dict[int, torch.Tensor] = {}  # layer -> (slots, L)
        self._gate: dict[int, torch.Tensor] = {}  # layer -> (slots,)
        self._users: dict[int, int] = {}
        self._slot_layers: dict[int, frozenset[int]] = {}
        self._capacity = 0

    def assign(
        self, slot: int, prompt: AdaptionPrompt | None, loras: Sequence[dict[str, LoraWeights]] = ()
    ) -> None:
        """Put a row's prompt (its keys and values through the row's LoRA'd projections) into a slot."""
        self.release(slot)
        self._reserve(slot + 1)
        layers = prompt.layers if prompt is not None else {}
        for index, layer in layers.items():
            if index not in self._key:
                self._add_layer(index, layer.key.shape[1])
            elif layer.key.shape[1] > self._key[index].shape[2]:
                self._grow_length(index, layer.key.shape[1])
        for index in self._key:
            self._key[index][slot].zero_()
            self._value[index][slot].zero_()
            self._masked[index][slot] = True
            self._gate[index][slot] = 0.0
            row = layers.get(index)
            if row is None:
                continue
            key, value = self._projected(index, row, loras)
            length = key.shape[1]
            self._key[index][slot, :, :length] = key
            self._value[index][slot, :, :length] = value
            self._masked[index][slot, :length] = False
            self._gate[index][slot] = row.gate
        for index in layers:
            self._users[index] = self._users.get(index, 0) + 1
        self._slot_layers[slot] = frozenset(layers)

    def _projected(
        self, index: int, layer: PromptLayer, loras: Sequence[dict[str, LoraWeights]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key, value = layer.key, layer.value
        if not loras:
            return key, value
        prefix = f"model.layers.{index}.self_attn"
        k_delta = _lora_delta(layer.prompt, loras, f"{prefix}.k_proj")
        v_delta = _lora_delta(layer.prompt, loras, f"{prefix}.v_proj")
        if k_delta is not None:
            key = _heads(self.target.k_proj(index).base(layer.prompt) + k_delta, self.target)
        if v_delta is not None:
            value = _heads(self.target.v_proj(index).base(layer.prompt) + v_delta, self.target)
        return key, value

    def release(self, slot: int) -> None:
        for index in self._slot_layers.pop(slot, frozenset()):
            self._users[index] -= 1

    def move(self, source: int, target: int) -> None:
        self.release(target)
        for store in (self._key, self._value, self._masked, self._gate):
            for t in store.values():
                t[target] = t[source]
        self._slot_layers[target] = self._slot_layers.pop(source, frozenset())

    def batch(self, start: int, stop: int) -> PromptBatch | None:
        """Views of slots [start, stop) for the layers some running row adapts; `None` if none does."""
        layers = {
            i: LayerBatch(
                self._key[i][start:stop],
                self._value[i][start:stop],
                self._masked[i][start:stop],
                self._gate[i][start:stop],
            )
            for i, users in self._users.items()
            if users > 0
        }
        return PromptBatch(layers) if layers else None

    def clear(self) -> None:
        self._key, self._value, self._masked, self._gate = {}, {}, {}, {}
        self._users, self._slot_layers, self._capacity = {}, {}, 0

    def _reserve(self, slots: int) -> None:
        if slots <= self._capacity:
            return
        capacity = 1 << max(0, slots - 1).bit_length()
        for store, fill in ((self._key, 0), (self._value, 0), (self._masked, True), (self._gate, 0)):
            for i, t in store.items():
                store[i] = _grown(t, 0, capacity, fill)
        self._capacity = capacity

    def _add_layer(self, index: int, length: int) -> None:
        t, n = self.target, self._capacity
        self._key[index] = torch.zeros((n, t.kv_heads, length, t.head_dim), device=t.device, dtype=t.dtype)
        self._value[index] = torch.zeros_like(self._key[index])
        self._masked[index] = torch.ones((n, length), device=t.device, dtype=torch.bool)
        self._gate[index] = torch.zeros((n,), device=t.device, dtype=t.dtype)
        self._users.setdefault(index, 0)

    def _grow_length(self, index: int, length: int) -> None:
        self._key[index] = _grown(self._key[index], 2, length, 0)
        self._value[index] = _grown(self._value[index], 2, length, 0)
        self._masked[index] = _grown(self._masked[index], 1, length, True)


def _grown(t: torch.Tensor, dim: int, size: int, fill: float | bool) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = size
    grown = torch.full(shape, fill, device=t.device, dtype=t.dtype)
    grown.narrow(dim, 0, t.shape[dim]).copy_(t)
    return grown


# ---------------------------------------------------------------- the forward pass


def install(model: nn.Module, context: PromptContext) -> None:
    """Hook every decoder layer's attention (and its q_proj) to add the rows' prompt terms."""
    decoder: Any = model.get_decoder()  # type: ignore[operator]
    for index, layer in enumerate(decoder.layers):
        attention = layer.self_attn
        attention.q_proj.register_forward_hook(_keep_queries(index, context))
        attention.register_forward_hook(_add_prompt(index, attention, context), with_kwargs=True)


def _keep_queries(index: int, context: PromptContext) -> Any:
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        batch = context.batch
        if batch is not None and index in batch.layers:
            context.queries[index] = output  # (B, T, H * d), the row's LoRA delta included

    return hook


def _add_prompt(index: int, attention: Any, context: PromptContext) -> Any:
    def hook(module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        batch = context.batch
        if batch is None or index not in batch.layers:
            return None
        queries = context.queries.pop(index)
        attn_output, *rest = output
        added = prompt_attention(queries, kwargs["position_embeddings"], batch.layers[index], attention)
        return (attn_output + added).to(attn_output.dtype), *rest

    return hook


def prompt_attention(
    queries: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    rows: LayerBatch,
    attention: Any,
) -> torch.Tensor:
    """`o_proj((gate * softmax(q k_p^T / sqrt(d))) v_p)` for every row; (B, T, hidden)."""
    b, t, _ = queries.shape
    d = rows.key.shape[-1]
    q = queries.view(b, t, -1, d).transpose(1, 2)  # (B, H, T, d)
    cos, sin = (e.unsqueeze(1) for e in position_embeddings)  # (B, 1, T, d)
    q = q * cos + _rotate_half(q) * sin
    groups = q.shape[1] // rows.key.shape[1]
    key = torch.repeat_interleave(rows.key, groups, dim=1)  # (B, H, L, d)
    value = torch.repeat_interleave(rows.value, groups, dim=1)
    scores = torch.matmul(q, key.transpose(2, 3).to(q.dtype)) / math.sqrt(d)  # (B, H, T, L)
    # A shorter (or absent) prompt's padding gets the lowest score, not -inf, so a row without a
    # prompt has finite weights; its gate is 0, so it adds exactly 0.
    scores = scores.masked_fill(rows.masked[:, None, None, :], torch.finfo(scores.dtype).min)
    weights = rows.gate[:, None, None, None] * torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(weights, value).transpose(1, 2).reshape(b, t, -1)  # (B, T, H * d)
    projected: torch.Tensor = attention.o_proj(out)  # the rows' o_proj LoRA deltas included
    return projected


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
