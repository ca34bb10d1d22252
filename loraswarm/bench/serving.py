"""`loraswarm bench serving`: multi-LoRA serving against the usual ways of doing it, in one run.

The workload: N requests (default 64) spread over A distinct adapters (default 32, rank 8 on
q_proj and v_proj, one per tenant pair), Poisson arrivals at a fixed rate (open loop: a request
is sent at its arrival time whatever the server is doing), counting prompts of ~12 tokens that
the model continues rather than ends (TGI has no `ignore_eos`), each asking
for its own number of new tokens (uniform between two bounds: real answers differ in length).
Measured on the same workload, the same machine, one after the other:

- **this server** — `loraswarm serve model-server` in its own process, driven over HTTP
  (`/generate_stream`, SSE) with each request's `adapter_id`;
- **(c) this server, base model only** — the same requests without `adapter_id`;
- **(a) transformers + peft, adapter swapped per request** — one PeftModel holding every adapter,
  `set_adapter(name)` then `generate` for one request at a time, in arrival order;
- **(b) peft `generate(adapter_names=...)` static batches** — whenever the model is free, every
  request that has arrived (up to the same batch cap as the server) runs as one batch to the
  longest request's end; later arrivals wait for the whole batch;
- **the peers** (loraswarm/bench/peers.py): vLLM's CPU build and llama.cpp's llama-server, each
  serving the same model folder and the same adapters, driven over `/v1/completions` by the same
  code (loraswarm/bench/drive.py), with adapters and on the base model only. A peer that cannot
  be installed, built or started gives rows that say why; the rest of the bench still runs.

A **closed burst** follows the open loop on this server and on each peer: `burst` requests at
once (32: one per adapter), ~70 prompt tokens and 64 new tokens each — the capacity figure the
peer goals are stated on (this server vs vLLM-CPU and llama.cpp, adapters / base model).

Throughput counts each request's own generated tokens over the makespan (first arrival to last
token). TTFT is first token minus arrival (queueing included); ITL is the gap between a
request's successive tokens. The peft baselines run in this process, the server and the peers
each in their own, one system at a time, all on the same number of CPU threads.

Then, in-process: adapter cold-load time (rank 8, from the store, into the server's registry),
1,000 registered adapters touched through an LRU of 64 (resident count, bytes, RSS), and the
machine's matmul peak in the served dtype, against which decode throughput is stated.
"""

from __future__ import annotations

import asyncio
import copy
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loraswarm.bench.drive import Outcome, Request, RunResult, drive_tgi
from loraswarm.bench.peers import (
    Peer,
    Served,
    Workload,
    llama_server_peer,
    run_peer,
    vllm_isa_peer,
    vllm_peer,
)
from loraswarm.shared.ports import free_port
from loraswarm.shared.settings import Settings


# Prompts the base model and the adapters continue for a long while (TGI has no `ignore_eos`,
# so the workload must not end early by itself): counting, from different places.
def _prompt(start: int, numbers: int = 3) -> str:
    return "Count: " + ", ".join(str(start + k) for k in range(numbers)) + ","


@dataclass(frozen=True)
class Options:
    requests: int = 64
    adapters: int = 32
    rank: int = 8
    rate: float = 8.0
    min_new_tokens: int = 12
    max_new_tokens: int = 36
    batch: int = 32
    swap_requests: int = 8
    registered: int = 1000
    lru: int = 64
    threads: int = 0
    seed: int = 0
    burst: int = 32  # requests sent at once (closed burst), each over the next adapter
    burst_new_tokens: int = 64
    burst_prompt_numbers: int = 17  # "Count: 10, 11, ..." with 17 numbers: about 70 prompt tokens
    dtype: str = "float32"  # of this server and the peers (the peft baselines run fp32)
    peers: tuple[str, ...] = ("vllm", "llama.cpp")


def workload(options: Options) -> list[Request]:
    rng = random.Random(options.seed)
    t = 0.0
    requests = []
    for i in range(options.requests):
        t += rng.expovariate(options.rate)
        prompt = _prompt(rng.randint(1, 90))
        requests.append(
            Request(
                prompt, i % options.adapters, rng.randint(options.min_new_tokens, options.max_new_tokens), t
            )
        )
    return requests


def burst(options: Options) -> list[Request]:
    """`options.burst` requests at once, request i over adapter i (mod the adapters), each asking
    for `burst_new_tokens`: the machine's capacity, where the open loop is its behaviour."""
    rng = random.Random(options.seed + 1)
    return [
        Request(
            _prompt(rng.randint(10, 60), options.burst_prompt_numbers),
            i % options.adapters,
            options.burst_new_tokens,
            0.0,
        )
        for i in range(options.burst)
    ]


# ---------------------------------------------------------------- adapters


def make_adapters(settings: Settings, options: Options, folder: Path) -> Any:
    """A PeftModel holding `options.adapters` rank-r LoRA adapters, each also saved and published."""
    import torch
    from peft import LoraConfig, get_peft_model

    from loraswarm.shared import models
    from loraswarm.shared.adapter_store import AdapterManifest, AdapterStore

    base, _ = models.load(settings, device=models.Device("cpu", torch.float32))
    store = AdapterStore.under(settings.data_dir)
    base_hash = models.model_hash(models.resolve(settings))
    torch.manual_seed(options.seed)
    peft_model: Any = None
    for i in range(options.adapters):
        config = LoraConfig(
            r=options.rank,
            lora_alpha=2 * options.rank,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
        )
        name = f"a{i}"
        if peft_model is None:
            peft_model = get_peft_model(copy.deepcopy(base), config, adapter_name=name)
        else:
            peft_model.add_adapter(name, config)
        with torch.no_grad():
            for pname, param in peft_model.named_parameters():
                if f"lora_B.{name}." in pname:
                    param.mul_(0.1)  # a trained adapter's size of delta, not random noise
        peft_model.save_pretrained(folder, selected_adapters=[name])
        store.publish(
            folder / name,
            AdapterManifest(
                tenant_id=f"t{i}", name="support", base_model=settings.base_model, base_model_hash=base_hash
            ),
        )
    peft_model.eval()
    return peft_model


# ---------------------------------------------------------------- this server, over HTTP


async def drive_server(url: str, requests: Sequence[Request], *, adapters: bool) -> RunResult:
    name = "this server" if adapters else "(c) this server, base model only"
    return await drive_tgi(url, requests, adapters=adapters, name=name)


def start_server(settings: Settings, options: Options, port: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "LORASWARM_DATA_DIR": str(settings.data_dir),
        "LORASWARM_DEVICE": "cpu",
        "LORASWARM_TRACING__EXPORTER": "none",
        "LORASWARM_MODEL_SERVER__MAX_BATCH_SIZE": str(options.batch),
        "LORASWARM_MODEL_SERVER__THREADS": str(options.threads),
        # fp32 by default: the peft baselines run fp32, so that batching is all that differs.
        "LORASWARM_MODEL_SERVER__DTYPE": options.dtype,
        "LORASWARM_MODEL_SERVER__MAX_RESIDENT_ADAPTERS": str(max(options.adapters, options.lru)),
    }
    command = [
        sys.executable,
        "-m",
        "loraswarm.cli",
        "serve",
        "model-server",
        "--port",
        str(port),
        "--broker",
        "memory",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the model server exited: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError("the model server did not become healthy in 300 s")
        time.sleep(0.2)


# ---------------------------------------------------------------- the peft baselines, in this process


class _StepClock:
    """A `generate` streamer that only notes when each decoding step's tokens came out."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        return None


def _useful(tokens: Any, limit: int, eos: set[int]) -> int:
    """Tokens a request really gets from a generated row: up to its own limit and its first EOS."""
    n = 0
    for token in tokens[:limit]:
        n += 1
        if int(token) in eos:
            break
    return n


def peft_swap(peft_model: Any, tokenizer: Any, requests: Sequence[Request], eos: set[int]) -> RunResult:
    """(a): one request at a time, in arrival order, its adapter made active first."""
    import torch

    start = time.perf_counter()
    outcomes = []
    with torch.inference_mode():
        for r in requests:
            time.sleep(max(0.0, start + r.arrival_s - time.perf_counter()))
            outcome = Outcome(arrival=start + r.arrival_s)
            peft_model.set_adapter(f"a{r.adapter}")
            inputs = tokenizer(r.prompt, return_tensors="pt")
            clock = _StepClock()
            out = peft_model.generate(
                **inputs, max_new_tokens=r.max_new_tokens, do_sample=False, streamer=clock
            )
            n = _useful(out[0, inputs["input_ids"].shape[1] :].tolist(), r.max_new_tokens, eos)
            outcome.tokens = clock.times[:n]
            outcomes.append(outcome)
    return RunResult("(a) transformers + peft, adapter swapped per request", outcomes)


def peft_static(
    peft_model: Any, tokenizer: Any, requests: Sequence[Request], cap: int, eos: set[int]
) -> RunResult:
    """(b): whatever has arrived (up to `cap`) runs as one mixed-adapter batch to its longest end."""
    import torch

    tokenizer.padding_side = "left"
    start = time.perf_counter()
    pending = list(requests)
    outcomes: list[Outcome] = []
    with torch.inference_mode():
        while pending:
            now = time.perf_counter() - start
            if pending[0].arrival_s > now:
                time.sleep(pending[0].arrival_s - now)
                now = time.perf_counter() - start
            batch = [r for r in pending if r.arrival_s <= now][:cap]
            pending = pending[len(batch) :]
            inputs = tokenizer([r.prompt for r in batch], return_tensors="pt", padding=True)
            clock = _StepClock()
            out = peft_model.generate(
                **inputs,
                adapter_names=[f"a{r.adapter}" for r in batch],
                max_new_tokens=max(r.max_new_tokens for r in batch),
                do_sample=False,
                streamer=clock,
                pad_token_id=tokenizer.pad_token_id,
            )
            width = inputs["input_ids"].shape[1]
            for row, r in enumerate(batch):
                n = _useful(out[row, width:].tolist(), r.max_new_tokens, eos)
                outcomes.append(Outcome(arrival=start + r.arrival_s, tokens=clock.times[:n]))
    return RunResult("(b) peft generate(adapter_names=...), static batches", outcomes)


# ---------------------------------------------------------------- in-process measurements


@dataclass
class AdapterFigures:
    cold_ms: list[float]
    registered: int
    lru: int
    most_resident: int
    resident_bytes: int
    adapter_bytes: int
    rss_before: int
    rss_after: int
    seconds: float
    flops_per_token: float


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def adapter_figures(settings: Settings, options: Options, root: Path) -> AdapterFigures:
    """Cold loads of the benchmark's rank-r adapters, then `registered` adapters through an LRU of `lru`."""
    from loraswarm.services.model_server.adapters import AdapterRegistry, LoraTarget, load_lora
    from loraswarm.services.model_server.server import ModelServer
    from loraswarm.shared.adapter_store import AdapterManifest, AdapterStore

    server = ModelServer.load(settings)  # not started: only its wrapped layers and registry are used
    registry = server.registry
    cold = []
    for i in range(options.adapters):
        started = time.perf_counter()
        registry.get(f"t{i}/support")
        cold.append((time.perf_counter() - started) * 1000)

    store = AdapterStore(root / "registered")
    source = settings.data_dir / "adapters" / "t0" / "support" / "versions" / "1"
    for i in range(options.registered):
        store.publish(
            source, AdapterManifest(tenant_id="many", name=f"a{i:04d}", base_model=settings.base_model)
        )
    target = LoraTarget(server.lora_modules, "cpu", server.device.dtype, 512)
    lru = AdapterRegistry(store, lambda v: load_lora(v, target), max_resident=options.lru, max_bytes=1 << 40)
    rss_before = _rss()
    started = time.perf_counter()
    most = 0
    for i in range(options.registered):
        lru.get(f"many/a{i:04d}")
        most = max(most, len(lru.resident()))
    seconds = time.perf_counter() - started
    return AdapterFigures(
        cold_ms=cold,
        registered=len(store.list("many")),
        lru=options.lru,
        most_resident=most,
        resident_bytes=lru.resident_bytes(),
        adapter_bytes=lru.resident()[0].nbytes,
        rss_before=rss_before,
        rss_after=_rss(),
        seconds=seconds,
        flops_per_token=flops_per_token(server.model),
    )


def matmul_peak_gflops(threads: int, dtype: str = "float32") -> float:
    """The best GFLOP/s of square matmuls in `dtype` on this machine, with the server's thread count."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    best = 0.0
    kind = getattr(torch, dtype)
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n, dtype=kind), torch.randn(n, n, dtype=kind)
        torch.mm(a, b)
        for _ in range(3):
            started = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - started) / 1e9)
    return best


def flops_per_token(model: Any) -> float:
    """2 x the weights a decode step multiplies by: every linear layer of the base model and its LM head.

    The server's wrapped layers keep their `nn.Linear` inside, so they count once.
    """
    import torch

    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 2.0 * linear


# ---------------------------------------------------------------- the run


@dataclass
class PeerRows:
    """One peer's rows, each `[adapters, base model only]`; a row that could not run says why."""

    key: str  # "vllm" or "llama.cpp"
    name: str
    open_loop: list[RunResult]
    burst: list[RunResult]


@dataclass
class Report:
    options: Options
    runs: list[RunResult]  # open loop: this server, (c), (a), (b)
    adapters: AdapterFigures
    peak_gflops: float
    flops_per_token: float
    threads: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    seconds: float
    burst: list[RunResult] = field(default_factory=list)  # this server: [adapters, base model only]
    peers: list[PeerRows] = field(default_factory=list)
    native_bf16: bool = False
    burst_prompt_tokens: float = 0.0


PEERS: dict[str, Callable[[Settings, Served], Peer]] = {
    "vllm": vllm_peer,
    "vllm-isa": vllm_isa_peer,
    "llama.cpp": llama_server_peer,
}


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def run(settings: Settings, options: Options) -> Report:
    import torch

    from loraswarm.shared import models

    begun = time.perf_counter()
    load_before = os.getloadavg()
    if options.threads:
        torch.set_num_threads(options.threads)
    threads = torch.get_num_threads()
    requests = workload(options)
    burst_requests = burst(options)
    warm = [Request("Warm up.", i, 4, 0.0) for i in range(options.adapters)]
    with tempfile.TemporaryDirectory(prefix="loraswarm-bench-serving-") as tmp:
        root = Path(tmp)
        bench_settings = settings.model_copy(update={"data_dir": root / "data", "device": "cpu"})
        peft_model = make_adapters(bench_settings, options, root / "saved")
        tokenizer = models.load(bench_settings, device=models.Device("cpu", torch.float32))[1]
        eos = {int(tokenizer.eos_token_id)}
        prompt_tokens = sum(len(tokenizer(r.prompt)["input_ids"]) for r in burst_requests) / max(
            1, len(burst_requests)
        )

        port = free_port()
        process = start_server(bench_settings, options, port)
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(drive_server(url, warm, adapters=True))
            # A, B, B, A: the load of a shared machine drifts, so neither goes first on average.
            first = asyncio.run(drive_server(url, requests, adapters=True))
            base = asyncio.run(drive_server(url, requests, adapters=False))
            base = base.merged(asyncio.run(drive_server(url, requests, adapters=False)))
            served = first.merged(asyncio.run(drive_server(url, requests, adapters=True)))
            burst_first = asyncio.run(drive_server(url, burst_requests, adapters=True))
            burst_base = asyncio.run(drive_server(url, burst_requests, adapters=False))
            burst_base = burst_base.merged(asyncio.run(drive_server(url, burst_requests, adapters=False)))
            burst_served = burst_first.merged(asyncio.run(drive_server(url, burst_requests, adapters=True)))
        finally:
            _stop(process)

        # The peers one at a time, after this server has stopped: each has the CPU to itself.
        served_here = Served(
            model=models.resolve(bench_settings),
            adapters=[root / "saved" / f"a{i}" for i in range(options.adapters)],
            rank=options.rank,
            batch=options.batch,
            threads=threads,
            dtype=options.dtype,
            scratch=root / "peers",
        )
        peers = []
        for key in options.peers:
            peer = PEERS[key](bench_settings, served_here)
            rows = run_peer(peer, [Workload("open loop", requests), Workload("burst", burst_requests)], warm)
            peers.append(PeerRows(key, peer.name, rows["open loop"], rows["burst"]))

        peft_model.generate(**tokenizer("Warm up.", return_tensors="pt"), max_new_tokens=2)
        swap = peft_swap(peft_model, tokenizer, requests[: options.swap_requests], eos)
        swap.note = (
            f"first {options.swap_requests} requests (one at a time, so its rate does not depend on how many)"
        )
        static = peft_static(peft_model, tokenizer, requests, options.batch, eos)
        figures = adapter_figures(bench_settings, options, root)
    peak = matmul_peak_gflops(options.threads, options.dtype)
    return Report(
        options=options,
        runs=[served, base, swap, static],
        adapters=figures,
        peak_gflops=peak,
        flops_per_token=figures.flops_per_token,
        threads=threads,
        load_before=load_before,
        load_after=os.getloadavg(),
        seconds=time.perf_counter() - begun,
        burst=[burst_served, burst_base],
        peers=peers,
        native_bf16=models.native_cpu_bf16(),
        burst_prompt_tokens=prompt_tokens,
    )
