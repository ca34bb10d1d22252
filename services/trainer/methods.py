"""The two adapter methods, one pipeline: LoRA and LLaMA-Adapter, as peft configurations.

LoRA (`LoraConfig`): low-rank deltas on the named linear layers; `bias="none"` and nothing in
`modules_to_save`, always — the base model is never trained (DESIGN.md §4). rsLoRA and DoRA are
options; the model server refuses DoRA, so such an adapter can be trained and evaluated here but
not served there.

LLaMA-Adapter (`AdaptionPromptConfig`, Zhang et al. 2023): learned prompt tokens with a
zero-initialised gate in the top `adapter_layers` attention layers. The model server serves it per
row in the same batch as LoRA rows (services/model_server/adaption_prompt.py), alone or on top of
a company LoRA. It has no weight delta to merge, so a user adapter cannot be trained on top of a
company LLaMA-Adapter (the trainer refuses `stack_on` naming one), and a stack holds at most one.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import ValidationError

from loraswarm.services.trainer.errors import InvalidRequest
from loraswarm.shared.settings.trainer import (
    DEFAULT_LEARNING_RATES,
    LLAMA_ADAPTER_ONLY,
    LORA_ONLY,
    Hyperparameters,
)
from loraswarm.shared.tenants import TenantConfig

Method = Literal["lora", "llama_adapter"]

# What the model server applies per request: LoRA and LLaMA-Adapter (vLLM and TGI: LoRA only).
# An adapter of another method under a name the specialists ask for would make every request of
# its scope fall back (or fail), so it is not published there.
SERVABLE: frozenset[str] = frozenset({"lora", "llama_adapter"})


def served_name(tenant_id: str, name: str, config: TenantConfig | None) -> bool:
    """Whether the specialists ask for `<tenant_id>/<name>` (the company or a user's adapter)."""
    company = (config.company_adapter if config else None) or f"{tenant_id}/company"
    prefix = config.user_adapter_prefix if config else "user-"
    return f"{tenant_id}/{name}" == company or name.startswith(prefix)


def check_servable(method: Method, tenant_id: str, name: str, config: TenantConfig | None) -> None:
    """`InvalidRequest` if the engine cannot serve `method` and the specialists use this name."""
    if method in SERVABLE or not served_name(tenant_id, name, config):
        return
    raise InvalidRequest(
        f"{tenant_id}/{name} is an adapter name the specialists serve, and the serving engine cannot "
        f"serve a {method!r} adapter (only {', '.join(sorted(SERVABLE))}); train it with method 'lora', "
        f"or under another name (e.g. {name}-{method.replace('_', '-')}) to evaluate it"
    )


def hyperparameters(method: Method, defaults: Hyperparameters, requested: dict[str, Any]) -> Hyperparameters:
    """The job's hyper-parameters: the defaults with the request's values; `InvalidRequest` names what is wrong."""
    foreign = LLAMA_ADAPTER_ONLY if method == "lora" else LORA_ONLY
    misplaced = sorted(set(requested) & set(foreign))
    if misplaced:
        raise InvalidRequest(f"{', '.join(misplaced)} do not apply to method {method!r}")
    try:
        hp = Hyperparameters.model_validate({**defaults.model_dump(), **requested})
    except ValidationError as exc:
        known = ", ".join(sorted(Hyperparameters.model_fields))
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            + (f" (known: {known})" if e["type"] == "extra_forbidden" else "")
            for e in exc.errors()
        )
        raise InvalidRequest(f"invalid hyperparameters: {reasons}") from exc
    if hp.learning_rate is None:
        hp = hp.model_copy(update={"learning_rate": DEFAULT_LEARNING_RATES[method]})
    return hp


def peft_config(method: Method, hp: Hyperparameters, model: Any) -> Any:
    from peft import AdaptionPromptConfig, LoraConfig, TaskType

    if method == "llama_adapter":
        layers = int(model.config.num_hidden_layers)
        if hp.adapter_layers > layers:
            raise InvalidRequest(
                f"adapter_layers={hp.adapter_layers}, but the base model has {layers} layers"
            )
        return AdaptionPromptConfig(
            adapter_len=hp.adapter_len, adapter_layers=hp.adapter_layers, task_type=TaskType.CAUSAL_LM
        )
    targets: str | list[str] = (
        "all-linear" if hp.target_modules == ["all-linear"] else list(hp.target_modules)
    )
    return LoraConfig(
        r=hp.r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=targets,
        use_rslora=hp.use_rslora,
        use_dora=hp.use_dora,
        bias="none",
        modules_to_save=None,
        task_type=TaskType.CAUSAL_LM,
    )


def attach(model: Any, method: Method, hp: Hyperparameters) -> Any:
    """`model` wrapped with a fresh, trainable adapter (the base weights frozen)."""
    from peft import get_peft_model

    config = peft_config(method, hp, model)
    if method == "lora" and hp.target_modules != ["all-linear"]:
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in hp.target_modules if t not in names]
        if missing:
            raise InvalidRequest(
                f"target_modules {missing} are not layers of the base model; it has e.g. "
                "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (or use all-linear)"
            )
    torch.manual_seed(hp.seed)  # the adapter's initialisation
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules the model does not have
        raise InvalidRequest(f"cannot build the {method} adapter: {exc}") from exc
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable, "an adapter without trainable weights"
    assert all(("lora_" in n or "adaption_" in n) for n in trainable), "only adapter weights may train"
    return peft_model


def merge(model: Any, adapter_path: str) -> Any:
    """`model` with a stored LoRA adapter merged into its weights (the company adapter under a user's)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_path).merge_and_unload()


def load(model: Any, adapter_path: str) -> Any:
    """`model` with a stored adapter of either method applied, for evaluation."""
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(model, adapter_path)
    loaded.eval()
    return loaded
