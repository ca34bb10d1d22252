"""LLaMA-Adapter rows in the heterogeneous batch are exact: peft's AdaptionPrompt logits, whatever shares the pass.

Adapters are real peft `AdaptionPromptConfig` adapters saved with `save_pretrained`, with their
zero-initialised gates set to non-zero values (a fresh adapter changes nothing). Every comparison
is on raw logits, teacher-forced through peft itself, fp32 on the CPU, within the LoRA tests'
`LOGIT_TOL`; bf16 serving is held to test_dtype.py's tolerances against fp32 serving.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from peft import AdaptionPromptConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import load_file, save_file

from loraswarm.demo import model_server
from loraswarm.services.model_server.adapters import load_adapter
from loraswarm.services.model_server.adaption_prompt import PromptSlots
from loraswarm.services.model_server.errors import AdapterUnusable
from loraswarm.services.model_server.server import Generation
from loraswarm.shared.adapter_store import AdapterManifest, AdapterVersion, InvalidAdapter
from loraswarm.shared.settings import Settings
from tests.model_server.conftest import Served, small_limits
from tests.model_server.test_batching import (
    LOGIT_TOL,
    PROMPT,
    generate,
    generate_together,
    ids,
    logits,
    max_diff,
)


@dataclass(frozen=True)
class PromptSpec:
    tenant: str
    name: str
    length: int
    layers: int
    seed: int
    gate: float = 1.0  # the trained gate's scale; peft starts it at 0 (no effect)

    @property
    def id(self) -> str:
        return f"{self.tenant}/{self.name}"


PROMPTS = {
    "acme/user-llama": PromptSpec("acme", "user-llama", 10, 8, seed=11),
    "globex/llama": PromptSpec("globex", "llama", 6, 3, seed=12, gate=2.0),  # shorter, fewer layers
    "initech/llama": PromptSpec("initech", "llama", 16, 30, seed=13, gate=0.1),  # every layer
}


def save_prompt(served: Served, spec: PromptSpec, folder: Path) -> Path:
    torch.manual_seed(spec.seed)
    config = AdaptionPromptConfig(
        adapter_len=spec.length, adapter_layers=spec.layers, task_type=TaskType.CAUSAL_LM
    )
    model = get_peft_model(copy.deepcopy(served.factory.base), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("adaption_gate"):
                param.copy_(spec.gate * (0.5 + torch.rand(1)))
    model.save_pretrained(str(folder))
    return folder


def publish_prompt(served: Served, spec: PromptSpec, folder: Path, **manifest: Any) -> AdapterVersion:
    fields = {
        "tenant_id": spec.tenant,
        "name": spec.name,
        "method": "llama_adapter",
        "base_model": "SmolLM2-135M-Instruct",
        "base_model_hash": served.factory.base_hash,
        **manifest,
    }
    return served.store.publish(folder, AdapterManifest.model_validate(fields))


@pytest.fixture(scope="module")
def prompts(served: Served, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llama-adapters")
    folders = {}
    for key, spec in PROMPTS.items():
        folders[key] = save_prompt(served, spec, root / spec.name / spec.tenant)
        publish_prompt(served, spec, folders[key])
    return folders


def peft_reference(
    served: Served,
    prompt_path: Path,
    lora_ids: list[str],
    prompt_ids: list[int],
    generated: list[int],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """peft's logits per generated position: the LoRAs merged into the weights, the AdaptionPrompt on top."""
    base: Any = copy.deepcopy(served.factory.base)
    model: Any = base.to(dtype)
    for lora_id in lora_ids:
        model = PeftModel.from_pretrained(model, served.store.resolve(lora_id).path).merge_and_unload()
    model = PeftModel.from_pretrained(model, prompt_path).to(dtype)
    model.eval()
    sequence = torch.tensor([prompt_ids + generated[:-1]])
    with torch.no_grad():
        out: torch.Tensor = model(sequence).logits[0]  # (P + n - 1, V)
    return out[len(prompt_ids) - 1 :].float()


def assert_matches_peft(
    served: Served, prompt_path: Path, lora_ids: list[str], served_run: Generation
) -> None:
    """The served logits are peft's, within fp32 rounding.

    Within `LOGIT_TOL` of peft's fp32 logits — or, where peft's fp32 logits are themselves farther
    than that from the exact (fp64) ones, as close to the exact ones as peft's are, within a
    factor 3. The second case is a prompt in all 30 layers: measured, peft fp32 is 9.3e-3 from
    fp64 and the server 1.7e-2 (8.5e-3 from peft); the default 8 layers stay within 1e-3.
    """
    pids = prompt_ids(served)
    generated = ids(served_run)
    got = logits(served_run)
    peft32 = peft_reference(served, prompt_path, lora_ids, pids, generated)
    gap = float((got - peft32).abs().max())
    if gap < LOGIT_TOL:
        return
    exact = peft_reference(served, prompt_path, lora_ids, pids, generated, torch.float64)
    peft_error = float((peft32 - exact).abs().max())
    served_error = float((got - exact).abs().max())
    assert served_error < 3 * peft_error, (gap, served_error, peft_error)


def prompt_ids(served: Served) -> list[int]:
    return list(served.server.tokenizer(PROMPT)["input_ids"])


# ---------------------------------------------------------------- exact, alone and in a mixed batch


async def test_a_llama_adapter_row_matches_peft_and_changes_the_output(
    served: Served, prompts: dict[str, Path]
) -> None:
    server = served.server
    base = await generate(server, PROMPT, max_new_tokens=6)
    for key in PROMPTS:
        tuned = await generate(server, PROMPT, (key,), max_new_tokens=6)
        assert max_diff(tuned, base) > 100 * LOGIT_TOL, f"{key} changed nothing"
        assert_matches_peft(served, prompts[key], [], tuned)


async def test_llama_adapter_lora_and_base_rows_share_one_forward_pass_exactly(
    served: Served, prompts: dict[str, Path]
) -> None:
    """Three LLaMA-Adapters (lengths 10, 6, 16; 8, 3, 30 layers), two LoRAs, a stack and the base
    model, prefilled together and decoded together with the KV cache."""
    server = served.server
    plan: list[tuple[str, ...]] = [
        ("acme/user-llama",),
        ("globex/support",),
        ("globex/llama",),
        (),
        ("initech/llama",),
        ("acme/support", "acme/user-7"),
        ("initech/legal",),
    ]
    alone = [await generate(server, PROMPT, a, max_new_tokens=6) for a in plan]
    together = await generate_together(server, [(PROMPT, a, 6) for a in plan])
    for adapters, a, t in zip(plan, alone, together, strict=True):
        assert max(t.batch_sizes) == len(plan), f"{adapters} did not share the batch: {t.batch_sizes}"
        assert ids(t) == ids(a), adapters
        if adapters and adapters[0] in PROMPTS:
            # Batched as alone: peft's logits within fp32 rounding (see assert_matches_peft: the
            # all-layer prompt amplifies rounding, here 2e-3 between the two runs).
            assert_matches_peft(served, prompts[adapters[0]], [], t)
        else:
            assert max_diff(t, a) < LOGIT_TOL, adapters


async def test_rows_leaving_move_their_prompts_with_them(served: Served, prompts: dict[str, Path]) -> None:
    """Short rows finish first; the LLaMA-Adapter rows move down into their slots and must not notice."""
    server = served.server
    plan = [
        (("globex/support",), 2),
        (("acme/support",), 2),
        (("acme/user-llama",), 8),
        (("globex/llama",), 8),
    ]
    alone = [await generate(server, PROMPT, a, max_new_tokens=n) for a, n in plan]
    together = await generate_together(server, [(PROMPT, a, n) for a, n in plan])
    assert max(together[2].batch_sizes) == 4 and together[2].batch_sizes[-1] == 2
    for a, t in zip(alone, together, strict=True):
        assert ids(a) == ids(t)
        assert max_diff(a, t) < LOGIT_TOL


# ---------------------------------------------------------------- stacking with LoRA


@pytest.mark.parametrize("order", ["company LoRA first", "LLaMA-Adapter first"])
async def test_a_company_lora_with_a_user_llama_adapter_is_peft_with_the_lora_merged(
    served: Served, prompts: dict[str, Path], order: str
) -> None:
    # acme/support (q_proj, v_proj) and acme/user-7 (all linear layers, k_proj and o_proj too):
    # the prompt's keys and values go through the LoRA'd projections, as in the merged model.
    loras = ["acme/support", "acme/user-7"]
    stack = (*loras, "acme/user-llama") if order == "company LoRA first" else ("acme/user-llama", *loras)
    server = served.server
    stacked = await generate(server, PROMPT, stack, max_new_tokens=6)
    lora_only = await generate(server, PROMPT, tuple(loras), max_new_tokens=6)
    assert max_diff(stacked, lora_only) > 100 * LOGIT_TOL
    assert_matches_peft(served, prompts["acme/user-llama"], loras, stacked)


def test_two_llama_adapters_in_one_stack_are_refused(served: Served, prompts: dict[str, Path]) -> None:
    spec = PromptSpec("acme", "other-llama", 4, 2, seed=14)
    publish_prompt(served, spec, prompts["acme/user-llama"])
    with pytest.raises(AdapterUnusable, match="both LLaMA-Adapters; a stack may hold at most one"):
        served.server.load_adapters(("acme/user-llama", "acme/other-llama"))
    answer = httpx.post(
        f"{served.url}/generate",
        json={"inputs": PROMPT, "parameters": {"adapter_id": "acme/user-llama+acme/other-llama"}},
        headers=served.headers("acme"),
        timeout=60,
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error_type"] == "invalid_adapter"


# ---------------------------------------------------------------- at run time: tenant-bound, LRU, refused when it cannot apply


def test_a_llama_adapter_is_tenant_bound_and_loaded_once(served: Served, prompts: dict[str, Path]) -> None:
    body = {"inputs": PROMPT, "parameters": {"adapter_id": "globex/llama", "max_new_tokens": 2}}
    foreign = httpx.post(f"{served.url}/generate", json=body, headers=served.headers("acme"), timeout=60)
    assert foreign.status_code == 403, foreign.text
    registry = served.server.registry
    loads = None
    for _ in range(3):
        own = httpx.post(f"{served.url}/generate", json=body, headers=served.headers("globex"), timeout=60)
        assert own.status_code == 200, own.text
        loads = registry.stats.loads if loads is None else loads
    assert registry.stats.loads == loads  # loaded (at most) once, then resident: hits only
    resident = {a.id: a for a in registry.resident()}
    loaded = resident["globex/llama@1"]
    assert loaded.method == "llama_adapter" and loaded.prompt is not None
    # 3 layers of a prompt (6, 576) and its keys and values (3 KV heads x 6 x 64 each), fp32.
    assert loaded.nbytes == 3 * (6 * 576 + 2 * 3 * 6 * 64) * 4


def _broken(served: Served, tmp_path: Path, name: str, edit: Any, **manifest: Any) -> AdapterVersion:
    spec = PromptSpec("acme", name, 4, 2, seed=15)
    folder = save_prompt(served, spec, tmp_path / name)
    edit(folder)
    return publish_prompt(served, spec, folder, **manifest)


def _config(folder: Path, **changes: Any) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _tensors(folder: Path, change: Any) -> None:
    path = folder / "adapter_model.safetensors"
    save_file(change(load_file(str(path))), str(path))


@pytest.mark.parametrize(
    ("name", "edit", "manifest", "reason"),
    [
        (
            "too-many-layers",
            lambda f: _config(f, adapter_layers=31),
            {},
            "adapts 31 layers, but the served base model has 30",
        ),
        (
            "other-base",
            lambda f: None,
            {"base_model": "llama-7b", "base_model_hash": "0123456789abcdef"},
            "trained on base model 'llama-7b'",
        ),
        (
            "other-width",
            lambda f: _tensors(
                f,
                lambda t: {
                    k: (v[..., :512].contiguous() if k.endswith("prompt") else v) for k, v in t.items()
                },
            ),
            {},
            r"expected \(1, 4, 576\) and \(1,\) \(was it trained on another base model\?\)",
        ),
        (
            "nan-gate",
            lambda f: _tensors(
                f, lambda t: {k: (v * float("nan") if k.endswith("gate") else v) for k, v in t.items()}
            ),
            {},
            "holds NaN or infinite values",
        ),
        (
            "lora-config",
            lambda f: _config(f, peft_type="LORA"),
            {},
            "its adapter_config.json is a LORA adapter",
        ),
    ],
)
def test_a_llama_adapter_that_cannot_apply_is_refused_clearly(
    served: Served, tmp_path: Path, name: str, edit: Any, manifest: dict[str, Any], reason: str
) -> None:
    version = _broken(served, tmp_path, name, edit, **manifest)
    server = served.server
    from loraswarm.services.model_server.adapters import LoraTarget

    target = LoraTarget(
        server.lora_modules, "cpu", torch.float32, 64, base_model_hash=served.factory.base_hash
    )
    with pytest.raises(InvalidAdapter, match=reason):
        load_adapter(version, target, server.prompt_target)
    answer = httpx.post(
        f"{served.url}/generate",
        json={"inputs": PROMPT, "parameters": {"adapter_id": f"acme/{name}", "max_new_tokens": 2}},
        headers=served.headers("acme"),
        timeout=60,
    )
    assert answer.status_code == 422 and answer.json()["error_type"] == "invalid_adapter", answer.text
    assert httpx.get(f"{served.url}/health", timeout=10).status_code == 200


def test_a_row_without_a_prompt_gets_exactly_nothing_from_the_slots(served: Served) -> None:
    """A base or LoRA row next to LLaMA-Adapter rows: gate 0 and every position masked."""
    server = served.server
    loaded = server.load_adapters(("globex/llama",))[0]
    slots = PromptSlots(server.prompt_target)
    slots.assign(0, loaded.prompt)
    slots.assign(1, None)
    batch = slots.batch(0, 2)
    assert batch is not None and set(batch.layers) == {27, 28, 29}
    for layer in batch.layers.values():
        assert layer.gate[1] == 0 and bool(layer.masked[1].all())
        assert not bool(layer.masked[0].any()) and layer.gate[0] != 0


# ---------------------------------------------------------------- bf16


@pytest.fixture(scope="module")
def bf16_url(served: Served, prompts: dict[str, Path]) -> Iterator[str]:
    settings = Settings(broker="memory", data_dir=served.store.root.parent, device="cpu")
    settings.model_server = small_limits().model_copy(update={"dtype": "bfloat16"})
    with model_server(settings) as url:
        yield url


def _prefill(url: str, adapter_id: str, tenant: str) -> list[dict[str, Any]]:
    parameters = {
        "max_new_tokens": 4,
        "details": True,
        "decoder_input_details": True,
        "adapter_id": adapter_id,
    }
    response = httpx.post(
        f"{url}/generate",
        json={"inputs": PROMPT, "parameters": parameters},
        headers={"X-Tenant-Id": tenant},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    prefill: list[dict[str, Any]] = response.json()["details"]["prefill"]
    return prefill


# Prompts in the top layers, as the trainer's default (8). A random prompt in all 30 layers is
# ill-conditioned in bf16 whoever computes it: peft's own bf16 model is 2.05 (mean) and 9.4 (max)
# from its fp32 one on these logprobs, against 0.19 and 0.66 for the 8-layer adapter.
@pytest.mark.parametrize("adapter", ["acme/user-llama", "globex/llama"])
def test_bf16_llama_adapter_serving_agrees_with_fp32_within_its_precision(
    served: Served, bf16_url: str, adapter: str
) -> None:
    tenant = PROMPTS[adapter].tenant
    fp32 = _prefill(served.url, adapter, tenant)
    bf16 = _prefill(bf16_url, adapter, tenant)
    assert [t["id"] for t in bf16] == [t["id"] for t in fp32]
    gaps = [abs(a["logprob"] - b["logprob"]) for a, b in zip(fp32[1:], bf16[1:], strict=True)]
    # test_dtype.py's bounds for LoRA adapters: bf16 keeps ~3 significant digits.
    assert sum(gaps) / len(gaps) < 0.25, gaps
    assert max(gaps) < 0.8, gaps
