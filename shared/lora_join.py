"""Two LoRA adapters joined into one, along the rank axis: a served stack as one artifact.

Serving a company adapter and a user adapter stacked computes, for every target module,

    y = W x + s_c B_c (A_c x) + s_u B_u (A_u x)         # s = lora_alpha / r (or / sqrt(r), rsLoRA)

which is one LoRA of rank r_c + r_u:

    A = [A_c ; A_u]            (r_c + r_u, in)          # rows stacked
    B = [s_c B_c , s_u B_u]    (out, r_c + r_u)         # columns stacked, each part's scale folded in
    y = W x + B (A x)          # scale 1: lora_alpha = r_c + r_u, no rsLoRA

A module only one of the two adapts gets zero rows and columns for the other, so the join works for
different target modules, ranks and alphas. The result is an ordinary peft folder
(adapter_config.json + adapter_model.safetensors) that any engine taking one adapter per request
(vLLM, TGI) serves as the pair was gated, which is why the trainer publishes it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")


class JoinError(ValueError):
    """The two folders cannot be joined; the message says why."""


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """(config, module -> (A (r, in), B (out, r)), scale) of one peft LoRA folder."""
    try:
        config = json.loads((folder / CONFIG).read_text())
        tensors = load_file(str(folder / WEIGHTS))
    except (OSError, ValueError) as exc:
        raise JoinError(f"{folder} is not a LoRA adapter folder: {exc}") from exc
    if config.get("peft_type") != "LORA":
        raise JoinError(f"{folder} holds a {config.get('peft_type')} adapter; only LoRA adapters join")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise JoinError(f"{folder} uses per-module ranks or alphas, which this join does not read")
    if config.get("modules_to_save"):
        raise JoinError(
            f"{folder} trains whole modules ({config['modules_to_save']}), which cannot be stacked"
        )
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise JoinError(f"{folder}: unexpected tensor {key!r} (only lora_A/lora_B weights join)")
        parts.setdefault(match["module"], {})[match["which"]] = value
    modules = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise JoinError(f"{folder}: module {module} lacks lora_A or lora_B")
        modules[module] = (ab["A"], ab["B"])
    r = int(config["r"])
    alpha = float(config.get("lora_alpha", r))
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return config, modules, scale


def join(first: Path, second: Path, out: Path) -> dict[str, Any]:
    """Write the join of `first` and `second` (in that order: company, then user) to `out`;
    returns its adapter_config."""
    config_1, modules_1, scale_1 = _read(first)
    config_2, modules_2, scale_2 = _read(second)
    for key in ("base_model_name_or_path", "task_type"):
        if config_1.get(key) != config_2.get(key):
            raise JoinError(f"the adapters differ in {key}: {config_1.get(key)!r} vs {config_2.get(key)!r}")
    r_1, r_2 = int(config_1["r"]), int(config_2["r"])
    joined: dict[str, torch.Tensor] = {}
    for module in sorted(set(modules_1) | set(modules_2)):
        shape_of = modules_1.get(module) or modules_2[module]
        n_in, n_out = shape_of[0].shape[1], shape_of[1].shape[0]
        a = torch.zeros(r_1 + r_2, n_in, dtype=torch.float32)  # (r_1 + r_2, in)
        b = torch.zeros(n_out, r_1 + r_2, dtype=torch.float32)  # (out, r_1 + r_2)
        for offset, rank, scale, modules in ((0, r_1, scale_1, modules_1), (r_1, r_2, scale_2, modules_2)):
            if module in modules:
                part_a, part_b = modules[module]
                if part_a.shape != (rank, n_in) or part_b.shape != (n_out, rank):
                    raise JoinError(
                        f"module {module}: shapes {tuple(part_a.shape)}/{tuple(part_b.shape)} do not fit"
                    )
                a[offset : offset + rank] = part_a.float()
                b[:, offset : offset + rank] = part_b.float() * scale
        joined[f"{module}.lora_A.weight"] = a.contiguous()
        joined[f"{module}.lora_B.weight"] = b.contiguous()
    targets = sorted({m.rsplit(".", 1)[-1] for m in joined_modules(joined)})
    config = {
        **config_1,
        "r": r_1 + r_2,
        "lora_alpha": r_1 + r_2,  # scale 1: each part's own scale is folded into its B columns
        "use_rslora": False,
        "target_modules": targets,
        "lora_dropout": 0.0,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(joined, str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return config


def joined_modules(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The module names of a LoRA state dict (`...q_proj` of `...q_proj.lora_A.weight`)."""
    return sorted({m["module"] for key in tensors if (m := _KEY.match(key))})
