"""A joined stack (shared/lora_join.py) serves exactly what the two adapters stacked serve.

The company adapter `acme/support` (rank 8, q/v) and the user adapter `acme/user-7` (rank 4, every
linear layer, B halved) are joined into one rank-12 adapter and published; on 8 prompts the engine's
logits with the joined adapter equal those of the stacked pair within the batching tests' tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from peft import AdaptionPromptConfig, get_peft_model

from loraswarm.shared.adapter_store import AdapterManifest
from loraswarm.shared.lora_join import JoinError, join
from tests.model_server.conftest import ADAPTERS, Served
from tests.model_server.test_batching import LOGIT_TOL, generate, logits, max_diff

PROMPTS = [
    "The three most important things when onboarding a new customer are",
    "Our refund policy for unused equipment says",
    "To reset the espresso machine, first",
    "Dear customer, thank you for",
    "The warehouse accepts pallets up to",
    "Large claims are handled by",
    "Steps to book travel: 1.",
    "A good status report contains",
]


async def test_the_joined_stack_gives_the_stacks_logits_on_8_prompts(served: Served, tmp_path: Path) -> None:
    stack = ("acme/support", "acme/user-7")
    config = join(
        served.store.resolve(stack[0]).path, served.store.resolve(stack[1]).path, tmp_path / "joined"
    )
    assert config["r"] == 12 and config["lora_alpha"] == 12 and not config["use_rslora"]
    manifest = AdapterManifest(
        tenant_id="acme",
        name="stack-user-7",
        base_model="SmolLM2-135M-Instruct",
        base_model_hash=served.factory.base_hash,
    )
    served.store.publish(tmp_path / "joined", manifest)
    worst = 0.0
    for prompt in PROMPTS:
        stacked = await generate(served.server, prompt, stack, max_new_tokens=4)
        joined = await generate(served.server, prompt, ("acme/stack-user-7",), max_new_tokens=4)
        company = await generate(served.server, prompt, stack[:1], max_new_tokens=4)
        assert [t.id for t in joined.tokens] == [t.id for t in stacked.tokens], prompt
        worst = max(worst, float((logits(joined) - logits(stacked)).abs().max()))
        assert max_diff(stacked, company) > 100 * LOGIT_TOL  # the user's part is in the join
    assert worst < LOGIT_TOL, worst


def test_only_two_lora_adapters_of_one_base_model_join(served: Served, tmp_path: Path) -> None:
    company = served.store.resolve("acme/support").path
    prompt = get_peft_model(
        served.factory.base.__class__(served.factory.base.config),
        AdaptionPromptConfig(adapter_len=4, adapter_layers=2, task_type="CAUSAL_LM"),
    )
    prompt.save_pretrained(str(tmp_path / "llama-adapter"))
    with pytest.raises(JoinError, match="only LoRA adapters join"):
        join(company, tmp_path / "llama-adapter", tmp_path / "out")
    other = tmp_path / "other-base"
    other.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (other / name).write_bytes((served.store.resolve("acme/user-7").path / name).read_bytes())
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "gpt2"}))
    with pytest.raises(JoinError, match="base_model_name_or_path"):
        join(company, other, tmp_path / "out2")
    with pytest.raises(JoinError, match="not a LoRA adapter folder"):
        join(company, tmp_path / "missing", tmp_path / "out3")
    assert ADAPTERS["acme/user-7"].rank == 4
