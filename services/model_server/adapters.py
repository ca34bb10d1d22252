"""Adapters at run time: read a peft adapter from the adapter store, check it, keep the hot ones in memory.

`load_adapter` reads either method the manifest names: `load_lora` turns a saved peft LoRA into
per-module `LoraWeights` for the wrapped base model, `load_llama_adapter` a saved peft
AdaptionPrompt into per-layer prompt keys and values (services/model_server/adaption_prompt.py).
`load_lora` refuses,
refusing with a clear `InvalidAdapter` anything this server would apply wrongly (DoRA, trained
biases or embeddings, modules the base model does not have, shapes that do not fit, NaNs, another
base model). `AdapterRegistry` resolves ids against the store on every request (so a new
version is served the moment it is current) and keeps an LRU of loaded adapters bounded by
count and bytes; thousands can be registered while only the recently used ones take memory.

An entry is keyed by id, version and the manifest's creation time, so a name deleted and
published again (version numbers restart) can never be served from the old weights.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from loraswarm.services.model_server.adaption_prompt import AdaptionPrompt, PromptTarget, read_prompt
from loraswarm.services.model_server.lora import BatchedLoraLinear, LoraWeights
from loraswarm.shared.adapter_store import (
    AdapterNotFound,
    AdapterStore,
    AdapterVersion,
    InvalidAdapter,
    parse_adapter_id,
)

log = logging.getLogger("loraswarm.model_server.adapters")

_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>A|B)\.weight$")
# Options that change what a LoRA computes; an adapter using one is refused, not served wrongly.
_UNSUPPORTED = {
    "use_dora": "DoRA",
    "lora_bias": "trained LoRA biases",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D) weights",
    "layer_replication": "layer replication",
    "target_parameters": "target_parameters",
    "trainable_token_indices": "trainable token indices",
    "alora_invocation_tokens": "activated LoRA",
}


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter version in memory, ready to be gathered into a batch."""

    id: str  # "<tenant>/<name>@<version>"
    tenant_id: str
    name: str
    version: str
    cache_key: str
    weights: dict[str, LoraWeights]
    rank: int
    nbytes: int
    load_ms: float
    method: str = "lora"  # or "llama_adapter": then `weights` is empty and `prompt` holds it
    prompt: AdaptionPrompt | None = None


@dataclass(frozen=True)
class LoraTarget:
    """What the served base model offers adapters: its wrapped modules, its hash, where it runs."""

    modules: dict[str, BatchedLoraLinear]
    device: str
    dtype: torch.dtype
    max_rank: int
    base_model_hash: str = ""


SERVED_METHODS = ("lora", "llama_adapter")


def load_adapter(version: AdapterVersion, target: LoraTarget, prompts: PromptTarget) -> LoadedAdapter:
    """Read and check one stored adapter version of either method; `InvalidAdapter` says what is wrong."""
    if version.manifest.method == "llama_adapter":
        return load_llama_adapter(version, target, prompts)
    return load_lora(version, target)


def _check_base(version: AdapterVersion, target: LoraTarget) -> None:
    manifest = version.manifest
    if (
        target.base_model_hash
        and manifest.base_model_hash
        and manifest.base_model_hash != target.base_model_hash
    ):
        raise InvalidAdapter(
            f"adapter {version.ref.id} was trained on base model {manifest.base_model!r} "
            f"(hash {manifest.base_model_hash}); this server serves hash {target.base_model_hash}"
        )


def load_llama_adapter(version: AdapterVersion, target: LoraTarget, prompts: PromptTarget) -> LoadedAdapter:
    """Read and check one stored LLaMA-Adapter version (peft AdaptionPrompt)."""
    started = time.perf_counter()
    _check_base(version, target)
    prompt = read_prompt(version, prompts)
    label = version.ref.id
    return LoadedAdapter(
        id=label,
        tenant_id=version.ref.tenant_id,
        name=version.ref.name,
        version=str(version.ref.version),
        cache_key=f"{label}#{version.manifest.created_at.isoformat()}",
        weights={},
        rank=0,
        nbytes=prompt.nbytes,
        load_ms=(time.perf_counter() - started) * 1000,
        method="llama_adapter",
        prompt=prompt,
    )


def load_lora(version: AdapterVersion, target: LoraTarget) -> LoadedAdapter:
    """Read and check one stored LoRA version; `InvalidAdapter` says what is wrong with it."""
    started = time.perf_counter()
    label = version.ref.id
    manifest = version.manifest
    if manifest.method not in SERVED_METHODS:
        raise InvalidAdapter(
            f"adapter {label} is a {manifest.method!r} adapter; this server serves "
            f"{' and '.join(SERVED_METHODS)} adapters"
        )
    if manifest.method != "lora":
        raise InvalidAdapter(f"adapter {label} is a {manifest.method!r} adapter, not a LoRA")
    _check_base(version, target)
    config = _read_config(version, label)
    tensors = _read_tensors(version, label)
    weights = _module_weights(tensors, config, target, label)
    nbytes = sum(w.nbytes for w in weights.values())
    return LoadedAdapter(
        id=label,
        tenant_id=version.ref.tenant_id,
        name=version.ref.name,
        version=str(version.ref.version),
        cache_key=f"{label}#{manifest.created_at.isoformat()}",
        weights=weights,
        rank=max(w.rank for w in weights.values()),
        nbytes=nbytes,
        load_ms=(time.perf_counter() - started) * 1000,
    )


def _read_config(version: AdapterVersion, label: str) -> dict[str, Any]:
    path = version.path / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidAdapter(f"adapter {label}: adapter_config.json cannot be read ({exc})") from exc
    if not isinstance(config, dict):
        raise InvalidAdapter(f"adapter {label}: adapter_config.json is not a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise InvalidAdapter(
            f"adapter {label}'s manifest says lora, but its adapter_config.json is a {config.get('peft_type')} "
            "adapter; publish it again with the right method"
        )
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise InvalidAdapter(
                f"adapter {label} uses {what}, which this server does not apply; retrain without it"
            )
    if config.get("bias", "none") != "none":
        raise InvalidAdapter(
            f"adapter {label} trains biases (bias={config['bias']!r}); retrain with bias='none'"
        )
    if config.get("modules_to_save"):
        raise InvalidAdapter(
            f"adapter {label} saves whole modules ({config['modules_to_save']}); a tenant adapter may only "
            "carry LoRA deltas (DESIGN.md §4)"
        )
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)) or config[key] <= 0:
            raise InvalidAdapter(f"adapter {label}: adapter_config.json has no valid {key!r}")
    return config


def _read_tensors(version: AdapterVersion, label: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = version.path / "adapter_model.safetensors"
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise InvalidAdapter(
            f"adapter {label}: adapter_model.safetensors cannot be read ({type(exc).__name__}: {exc}); "
            "publish it again, saved with peft's save_pretrained"
        ) from exc


def _module_weights(
    tensors: dict[str, torch.Tensor], config: dict[str, Any], target: LoraTarget, label: str
) -> dict[str, LoraWeights]:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise InvalidAdapter(
                f"adapter {label}: unexpected tensor {key!r}; only LoRA A/B matrices of linear layers are served"
            )
        pairs.setdefault(match["module"], {})[match["part"]] = tensor
    if not pairs:
        raise InvalidAdapter(f"adapter {label}: adapter_model.safetensors holds no LoRA weights")
    weights: dict[str, LoraWeights] = {}
    for module_name, pair in sorted(pairs.items()):
        module = target.modules.get(module_name)
        if module is None:
            raise InvalidAdapter(
                f"adapter {label} targets {module_name!r}, which the base model does not have as a "
                "decoder linear layer (was it trained on another base model?)"
            )
        if set(pair) != {"A", "B"}:
            raise InvalidAdapter(f"adapter {label}: {module_name} lacks lora_{'B' if 'A' in pair else 'A'}")
        a, b = pair["A"], pair["B"]
        rank = a.shape[0] if a.dim() == 2 else -1
        if a.shape != (rank, module.in_features) or b.shape != (module.out_features, rank):
            raise InvalidAdapter(
                f"adapter {label}: {module_name} has A {tuple(a.shape)} and B {tuple(b.shape)}; "
                f"expected ({rank}, {module.in_features}) and ({module.out_features}, {rank})"
            )
        if rank > target.max_rank:
            raise InvalidAdapter(
                f"adapter {label}: rank {rank} is above this server's limit {target.max_rank}"
            )
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise InvalidAdapter(f"adapter {label}: {module_name} holds NaN or infinite values")
        scale = _scale(config, module_name, rank)
        weights[module_name] = LoraWeights.from_peft(a, b, scale, device=target.device, dtype=target.dtype)
    return weights


def _scale(config: dict[str, Any], module_name: str, rank: int) -> float:
    """peft's scale for one module: alpha / r, or alpha / sqrt(r) with rsLoRA; patterns as peft matches them."""
    alpha = float(config["lora_alpha"])
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module_name):
            alpha = float(value)
            break
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


# ---------------------------------------------------------------- the registry


@dataclass
class RegistryStats:
    hits: int = 0
    loads: int = 0
    evictions: int = 0
    failures: int = 0
    load_ms: list[float] = field(default_factory=list)


class AdapterRegistry:
    """Store lookups on every use, and an LRU of loaded adapters bounded by count and bytes."""

    def __init__(
        self,
        store: AdapterStore,
        loader: Callable[[AdapterVersion], LoadedAdapter],
        *,
        max_resident: int,
        max_bytes: int,
        on_load: Callable[[LoadedAdapter], None] | None = None,
    ) -> None:
        self.store = store
        self._on_load = on_load
        self._loader = loader
        self.max_resident = max_resident
        self.max_bytes = max_bytes
        self._resident: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.stats = RegistryStats()
        self.last_errors: dict[str, str] = {}

    def resolve(self, adapter_id: str) -> AdapterVersion:
        """The stored version an id means now (`AdapterNotFound` if none)."""
        try:
            return self.store.resolve(adapter_id)
        except FileNotFoundError as exc:
            raise AdapterNotFound(f"adapter {adapter_id!r} does not exist") from exc
        except (ValueError, OSError) as exc:
            raise InvalidAdapter(f"adapter {adapter_id}: its manifest cannot be read ({exc})") from exc

    def get(self, adapter_id: str) -> LoadedAdapter:
        """The loaded adapter for an id, from memory or from disk (blocking: call off the event loop)."""
        version = self.resolve(adapter_id)
        key = f"{version.ref.id}#{version.manifest.created_at.isoformat()}"
        with self._lock:
            hit = self._resident.get(key)
            if hit is not None:
                self._resident.move_to_end(key)
                self.stats.hits += 1
                return hit
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per version, however many requests ask at once
            with self._lock:
                hit = self._resident.get(key)
                if hit is not None:
                    self._resident.move_to_end(key)
                    self.stats.hits += 1
                    return hit
            try:
                loaded = self._loader(version)
            except InvalidAdapter as exc:
                with self._lock:
                    self.stats.failures += 1
                    self.last_errors[version.ref.id] = str(exc)
                    self._loading.pop(key, None)
                log.warning("refused adapter: %s", exc)
                raise
            with self._lock:
                self.stats.loads += 1
                self.stats.load_ms.append(loaded.load_ms)
                self.last_errors.pop(version.ref.id, None)
                self._forget_other_versions(version.ref.tenant_id, version.ref.name, keep=key)
                self._resident[key] = loaded
                self._evict()
                self._loading.pop(key, None)
            if self._on_load is not None:
                self._on_load(loaded)
            return loaded

    def unload(self, tenant_id: str, name: str) -> int:
        """Drop every loaded version of a name; how many were dropped."""
        with self._lock:
            return self._forget_other_versions(tenant_id, name, keep=None)

    def on_published(self, adapter_id: str) -> LoadedAdapter | None:
        """A new version became current: drop the old ones and load it, if it is still current."""
        ref = parse_adapter_id(adapter_id)
        with self._lock:
            self._forget_other_versions(ref.tenant_id, ref.name, keep=None)
        if ref.version and self.store.current(ref.tenant_id, ref.name) != ref.version:
            return None  # an older publication replayed: nothing to warm
        return self.get(f"{ref.tenant_id}/{ref.name}")

    def resident(self) -> list[LoadedAdapter]:
        with self._lock:
            return list(self._resident.values())

    def resident_bytes(self) -> int:
        with self._lock:
            return sum(a.nbytes for a in self._resident.values())

    def _forget_other_versions(self, tenant_id: str, name: str, keep: str | None) -> int:
        prefix = f"{tenant_id}/{name}@"
        doomed = [k for k in self._resident if k.startswith(prefix) and k != keep]
        for k in doomed:
            del self._resident[k]
        return len(doomed)

    def _evict(self) -> None:
        total = sum(a.nbytes for a in self._resident.values())
        while self._resident and (len(self._resident) > self.max_resident or total > self.max_bytes):
            _, evicted = self._resident.popitem(last=False)
            total -= evicted.nbytes
            self.stats.evictions += 1
