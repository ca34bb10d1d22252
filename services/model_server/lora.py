"""Heterogeneous LoRA in one forward pass: every row of the batch gets its own adapters' deltas.

Each target `nn.Linear` of the base model is wrapped once, at start-up, in a `BatchedLoraLinear`.
Before each forward pass the engine puts a `LoraBatch` into the shared `LoraContext`: for every
module some row uses, the rows' A and B matrices as padded per-row tensors (kept in `LoraSlots`,
one slot per running row). The wrapper then computes, for all rows at once,

    y = W x + B_row (A_row x)          # bmm over the batch: (B, T, in) -> (B, T, R) -> (B, T, out)

where `A_row` stacks the row's adapters along the rank axis (a company and a user adapter, r1 + r2)
and `B_row` carries each adapter's scale (alpha / r). Rows with a smaller total rank, or with no
adapter for this module, are zero-padded, so mixed ranks, stacks and base-model rows share one
forward pass. Nothing is swapped or merged into W, so no row can see another row's delta.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class LoraWeights:
    """One adapter's delta for one module, delta(x) = scale * B (A x), kept transposed for bmm."""

    a_t: torch.Tensor  # (in, r)   = A^T
    b_t: torch.Tensor  # (r, out)  = (scale * B)^T

    @classmethod
    def from_peft(
        cls, a: torch.Tensor, b: torch.Tensor, scale: float, *, device: str, dtype: torch.dtype
    ) -> LoraWeights:
        """From peft's `lora_A.weight` (r, in) and `lora_B.weight` (out, r); the scale is folded into B."""
        a_t = a.T.to(device=device, dtype=dtype).contiguous()
        b_t = (b.float() * scale).T.to(device=device, dtype=dtype).contiguous()
        return cls(a_t, b_t)

    @property
    def rank(self) -> int:
        return int(self.a_t.shape[1])

    @property
    def nbytes(self) -> int:
        return self.a_t.numel() * self.a_t.element_size() + self.b_t.numel() * self.b_t.element_size()


@dataclass(frozen=True)
class ModuleBatch:
    """Gathered per-row weights of one module, transposed for bmm."""

    a_t: torch.Tensor  # (B, in, R)
    b_t: torch.Tensor  # (B, R, out)


@dataclass
class LoraBatch:
    """What one forward pass applies: module name -> its rows' gathered weights."""

    modules: dict[str, ModuleBatch] = field(default_factory=dict)
    rows: int = 0


class LoraContext:
    """Shared by every wrapper; the engine sets `batch` before each forward pass (one thread)."""

    def __init__(self) -> None:
        self.batch: LoraBatch | None = None


class BatchedLoraLinear(nn.Module):
    """An `nn.Linear` plus, per row of the batch, that row's LoRA delta."""

    def __init__(self, base: nn.Linear, name: str, context: LoraContext) -> None:
        super().__init__()
        self.base = base
        self.name = name
        self.context = context

    @property
    def in_features(self) -> int:
        return int(self.base.in_features)

    @property
    def out_features(self) -> int:
        return int(self.base.out_features)

    @property
    def weight(self) -> torch.Tensor:
        weight: torch.Tensor = self.base.weight
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)
        batch = self.context.batch
        if batch is None:
            return y
        weights = batch.modules.get(self.name)
        if weights is None:
            return y
        # x: (B, T, in); a_t: (B, in, R); b_t: (B, R, out)
        assert x.dim() == 3 and x.shape[0] == weights.a_t.shape[0], (x.shape, weights.a_t.shape)
        return torch.baddbmm(y, torch.bmm(x, weights.a_t), weights.b_t)


def wrap_linear_layers(model: nn.Module, context: LoraContext) -> dict[str, BatchedLoraLinear]:
    """Wrap every `nn.Linear` of the decoder (not the LM head) in place; returns them by module path.

    The paths stay those of the plain model (`model.layers.0.self_attn.q_proj`), which is what
    peft's saved keys name after their `base_model.model.` prefix.
    """
    targets: list[tuple[str, nn.Module, str, nn.Linear]] = []
    for parent_name, parent in model.named_modules():
        if isinstance(parent, BatchedLoraLinear):
            continue  # wrapped already
        for child_name, child in parent.named_children():
            path = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, nn.Linear) and _is_decoder_path(path):
                targets.append((path, parent, child_name, child))
    wrapped: dict[str, BatchedLoraLinear] = {}
    for path, parent, child_name, linear in targets:
        wrapper = BatchedLoraLinear(linear, path, context)
        setattr(parent, child_name, wrapper)
        wrapped[path] = wrapper
    return wrapped


def _is_decoder_path(path: str) -> bool:
    # The LM head (often tied to the embeddings) is left alone: adapters that train it are refused.
    return ".layers." in path or path.startswith("layers.")


RowAdapters = Sequence[dict[str, LoraWeights]]  # one row: its adapters (a stack), each module -> weights


class LoraSlots:
    """The running rows' LoRA weights, one slot per row, laid out like the KV cache.

    Per module: `a_t` (slots, in, R) and `b_t` (slots, R, out), R the largest total rank any row
    has brought to that module, smaller ranks and base-model rows zero-padded. A row joining the
    batch writes only its own slot and a row leaving is overwritten by the row moved into its
    place, so nothing is re-gathered for the whole batch when one request comes or goes; a
    forward pass reads a contiguous range of slots as views.
    """

    def __init__(self, modules: dict[str, BatchedLoraLinear], device: str, dtype: torch.dtype) -> None:
        self.modules = modules
        self.device = device
        self.dtype = dtype
        self._a: dict[str, torch.Tensor] = {}
        self._b: dict[str, torch.Tensor] = {}
        self._users: dict[str, int] = {}  # module -> running rows whose adapters touch it
        self._slot_modules: dict[int, frozenset[str]] = {}
        self._capacity = 0

    def assign(self, slot: int, row: RowAdapters) -> None:
        """Put a row's adapters (a stack: summed deltas) into a slot."""
        self.release(slot)
        weights = {
            name: w for name in {n for adapter in row for n in adapter} if (w := _row_weights(row, name))
        }
        self._reserve(slot + 1)
        for name, w in weights.items():
            if name not in self._a:
                self._add_module(name, w.rank)
            elif w.rank > self._a[name].shape[2]:
                self._grow_rank(name, w.rank)
        for name in self._a:
            a, b = self._a[name], self._b[name]
            a[slot].zero_()
            b[slot].zero_()
            w = weights.get(name)
            if w is not None:
                a[slot, :, : w.rank] = w.a_t
                b[slot, : w.rank, :] = w.b_t
        for name in weights:
            self._users[name] = self._users.get(name, 0) + 1
        self._slot_modules[slot] = frozenset(weights)

    def release(self, slot: int) -> None:
        """The row in `slot` left; its weights stay until another row takes the slot."""
        for name in self._slot_modules.pop(slot, frozenset()):
            self._users[name] -= 1

    def move(self, source: int, target: int) -> None:
        """Compaction: the row in `source` now runs in `target` (whose row has left)."""
        self.release(target)
        for name in self._a:
            self._a[name][target] = self._a[name][source]
            self._b[name][target] = self._b[name][source]
        self._slot_modules[target] = self._slot_modules.pop(source, frozenset())

    def batch(self, start: int, stop: int) -> LoraBatch | None:
        """Views of slots [start, stop) for the modules some running row uses; `None` if none does."""
        modules = {
            name: ModuleBatch(self._a[name][start:stop], self._b[name][start:stop])
            for name, users in self._users.items()
            if users > 0
        }
        return LoraBatch(modules, stop - start) if modules else None

    def clear(self) -> None:
        """Free the memory (the engine is idle)."""
        self._a, self._b, self._users, self._slot_modules, self._capacity = {}, {}, {}, {}, 0

    def _reserve(self, slots: int) -> None:
        if slots <= self._capacity:
            return
        capacity = 1 << max(0, slots - 1).bit_length()
        for name in self._a:
            self._a[name] = _grown(self._a[name], 0, capacity)
            self._b[name] = _grown(self._b[name], 0, capacity)
        self._capacity = capacity

    def _add_module(self, name: str, rank: int) -> None:
        module = self.modules[name]
        shape_a = (self._capacity, module.in_features, rank)
        shape_b = (self._capacity, rank, module.out_features)
        self._a[name] = torch.zeros(shape_a, device=self.device, dtype=self.dtype)
        self._b[name] = torch.zeros(shape_b, device=self.device, dtype=self.dtype)
        self._users.setdefault(name, 0)

    def _grow_rank(self, name: str, rank: int) -> None:
        self._a[name] = _grown(self._a[name], 2, rank)
        self._b[name] = _grown(self._b[name], 1, rank)


def _grown(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """`t` zero-padded along `dim` to `size` (zero rank columns add nothing to B A x)."""
    shape = list(t.shape)
    shape[dim] = size
    grown = torch.zeros(shape, device=t.device, dtype=t.dtype)
    grown.narrow(dim, 0, t.shape[dim]).copy_(t)
    return grown


def _row_weights(row: RowAdapters, name: str) -> LoraWeights | None:
    """One row's adapters for one module as one LoRA of the summed rank.

    A stack is a concatenation along the rank axis: B1 A1 x + B2 A2 x = [B1 B2] [A1; A2] x.
    """
    stack = [adapter[name] for adapter in row if name in adapter]
    if not stack:
        return None
    if len(stack) == 1:
        return stack[0]
    return LoraWeights(torch.cat([w.a_t for w in stack], dim=1), torch.cat([w.b_t for w in stack], dim=0))
