"""The KV cache of the running batch: one slot (row) per sequence, each at its own length.

Layout per layer: `k[layer]`, `v[layer]` of shape (rows, kv_heads, capacity, head_dim). Row i of
the running batch owns slot i, so a decode step attends over `k[:B, :, :width]`, a view, with a
mask that hides each row's unused tail; when a sequence leaves, the last row moves into its slot
(compaction) so the running rows stay a prefix. Capacity grows in chunks as sequences get
longer and more rows join, and is dropped when the engine goes idle.

The object is handed to the Hugging Face model as its `cache`: attention layers call
`update(key, value, layer_idx)` and attend over what it returns. The engine says beforehand what
the next forward pass is (`plan_prefill` / `plan_decode`).
"""

from __future__ import annotations

from typing import Any

import torch

_LENGTH_CHUNK = 256


class SlotKVCache:
    def __init__(
        self, num_layers: int, kv_heads: int, head_dim: int, device: str, dtype: torch.dtype
    ) -> None:
        self.num_layers = num_layers
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.device = device
        self.dtype = dtype
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self._mode = "idle"
        self._rows = slice(0, 0)
        self._positions: torch.Tensor | None = None  # (B,) decode write positions
        self._row_index: torch.Tensor | None = None  # (B,)
        self._width = 0

    # ------------------------------------------------------------------ capacity

    @property
    def row_capacity(self) -> int:
        return int(self.k[0].shape[0]) if self.k else 0

    @property
    def length_capacity(self) -> int:
        return int(self.k[0].shape[2]) if self.k else 0

    def reserve(self, rows: int, length: int) -> None:
        """Make room for `rows` slots of `length` positions, keeping what is stored."""
        if rows <= self.row_capacity and length <= self.length_capacity:
            return
        # Rows grow by powers of two, so a batch filling up one by one copies rarely.
        new_rows = max(self.row_capacity, 1 << max(0, rows - 1).bit_length())
        new_length = max(self.length_capacity, -(-length // _LENGTH_CHUNK) * _LENGTH_CHUNK)
        shape = (new_rows, self.kv_heads, new_length, self.head_dim)
        old_rows, old_length = self.row_capacity, self.length_capacity
        for store in (self.k, self.v):
            for layer in range(self.num_layers):
                grown = torch.zeros(shape, device=self.device, dtype=self.dtype)
                if store and old_rows:
                    grown[:old_rows, :, :old_length] = store[layer]
                if len(store) > layer:
                    store[layer] = grown
                else:
                    store.append(grown)

    def release(self) -> None:
        """Free the memory (the engine is idle)."""
        self.k, self.v = [], []

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))

    # ------------------------------------------------------------------ plans

    def plan_prefill(self, first_row: int, rows: int) -> None:
        """Next forward: `rows` new sequences from slot `first_row`, positions 0..width-1."""
        self._mode = "prefill"
        self._rows = slice(first_row, first_row + rows)

    def plan_decode(self, positions: torch.Tensor, width: int) -> None:
        """Next forward: one new token per running row (slots 0..B-1), written at `positions`."""
        self._mode = "decode"
        self._positions = positions
        self._row_index = torch.arange(positions.shape[0], device=positions.device)
        self._width = width

    def move(self, source: int, target: int, length: int) -> None:
        """Copy a sequence's first `length` positions from one slot to another (compaction)."""
        for store in (self.k, self.v):
            for layer in store:
                layer[target, :, :length] = layer[source, :, :length]

    # ------------------------------------------------------------------ the model's side

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.k[layer_idx], self.v[layer_idx]
        if self._mode == "prefill":
            # key_states: (n, kv_heads, width, head_dim), right-padded prompts; the padding tail is
            # garbage that the masks never read and the first decode steps overwrite.
            width = key_states.shape[2]
            k[self._rows, :, :width] = key_states
            v[self._rows, :, :width] = value_states
            return key_states, value_states
        if self._mode == "decode":
            assert self._positions is not None and self._row_index is not None
            batch = key_states.shape[0]
            # key_states: (B, kv_heads, 1, head_dim) -> each row's slot at its own position.
            k[self._row_index, :, self._positions] = key_states[:, :, 0]
            v[self._row_index, :, self._positions] = value_states[:, :, 0]
            return k[:batch, :, : self._width], v[:batch, :, : self._width]
        raise RuntimeError("SlotKVCache.update called without a plan")
