"""`loraswarm bench serving`'s report: the section it writes into BENCHMARKS.md.

The open-loop table (this server, its base model, the peft baselines, each peer with adapters
and without), the closed-burst table with each system's adapters / base ratio, and the goals —
those on the peers stated on the burst, each from rows of the same run, a goal whose row is
missing stated as not measured, with the reason.
"""

from __future__ import annotations

from pathlib import Path

from loraswarm.bench.drive import RunResult
from loraswarm.bench.machine import describe
from loraswarm.bench.report import percentile, write_section
from loraswarm.bench.serving import Report, burst, workload


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:,.0f}"


def _row(r: RunResult, reference: RunResult, extra: str = "") -> str:
    if r.missing:
        return f"| {r.name} | — | missing: {r.missing} | — |{extra and ' — |'} — | — |"
    return (
        f"| {r.name} | {r.tokens} | {r.throughput:.1f} | {r.throughput / reference.throughput:.2f} |{extra} "
        f"{_ms(r.ttft(), 50)} / {_ms(r.ttft(), 95)} | {_ms(r.itl(), 50)} / {_ms(r.itl(), 95)} |"
    )


def _goal(label: str, value: float | str, target: float, better: str = ">=") -> str:
    if isinstance(value, str):  # a row it needs is missing
        return f"| {label} | — | {better} {target:g} | **not measured**: {value} |"
    ok = value >= target if better == ">=" else value <= target
    return f"| {label} | {value:.2f} | {better} {target:g} | {'met' if ok else '**not met**'} |"


def _ratio(a: RunResult, b: RunResult) -> float | str:
    """a's tokens/s over b's, or why one of them is missing."""
    if a.missing or b.missing:
        return "; ".join(f"{r.name}: {r.missing}" for r in (a, b) if r.missing)
    return a.throughput / b.throughput


VLLM_KEYS = ("vllm", "vllm-isa")  # the generic build and the one for this CPU's ISA


def _best(report: Report, keys: tuple[str, ...], index: int) -> RunResult | None:
    """The fastest burst row (`index` 0: adapters, 1: base model) of the peers `keys`; where every
    one is missing, the first, so the goal says why; None where none of them ran."""
    rows = [p.burst[index] for p in report.peers if p.key in keys]
    ran = [r for r in rows if not r.missing]
    if ran:
        return max(ran, key=lambda r: r.throughput)
    return rows[0] if rows else None


def _peer_goals(report: Report) -> list[str]:
    served, base = report.burst
    distinct = len({r.adapter for r in burst(report.options)})
    lines = [
        _goal(
            f"burst: this server, {distinct} adapters / its base model",
            served.throughput / base.throughput,
            0.95,
        )
    ]
    for keys, target, label in (
        (VLLM_KEYS, 3.0, "vLLM-CPU (its best row)"),
        (("llama.cpp",), 4.0, "llama.cpp"),
    ):
        row = _best(report, keys, 0)
        value: float | str = _ratio(served, row) if row else "not in this run (--peers)"
        lines.append(_goal(f"burst: this server / {label}, {distinct} adapters", value, target))
    row = _best(report, VLLM_KEYS, 1)
    lines.append(
        _goal(
            "burst: this server / vLLM-CPU (its best row), base model only",
            _ratio(base, row) if row else "not in this run (--peers)",
            1.5,
        )
    )
    return lines


def markdown(report: Report) -> str:
    o = report.options
    served, base, swap, static = report.runs[:4]
    a = report.adapters

    rows = [
        "| system | tokens | tok/s | vs this server | TTFT p50 / p95 (ms) | ITL p50 / p95 (ms) |",
        "|---|---:|---:|---:|---:|---:|",
        *(_row(r, served) for r in report.runs),
        *(_row(r, served) for p in report.peers for r in p.open_loop),
    ]
    achieved = served.throughput * report.flops_per_token / 1e9
    arrivals = max(r.arrival_s for r in workload(o))
    cold_p95 = percentile(a.cold_ms, 95)
    dtype = "fp32" if o.dtype == "float32" else o.dtype
    lines = [
        "## Serving: heterogeneous multi-LoRA batching (`loraswarm bench serving`)",
        "",
        f"Machine: {describe()}; {report.threads} CPU thread(s) for the forward passes of every system, {dtype}"
        + (
            ""
            if report.native_bf16
            else " (this CPU has no native bf16 — no AVX512-BF16, no AMX — so every system runs fp32)"
        )
        + f". Load average before / after: {report.load_before[0]:.1f} / {report.load_after[0]:.1f} "
        "(the machine is shared; every figure below comes from the same run, so compare ratios). "
        f"Whole run: {report.seconds:.0f} s.",
        "",
        f"Workload: {o.requests} requests over {o.adapters} distinct adapters (rank {o.rank}, q_proj + v_proj, "
        f"{o.adapters} tenants), Poisson arrivals at {o.rate:g} req/s (open loop), {o.min_new_tokens}-{o.max_new_tokens} "
        f"new tokens each (uniform), greedy. Batch cap {o.batch} for this server, (b) and the peers. "
        "This server ran the workload twice with adapters and twice without (A, B, B, A); its rows add both runs. "
        f"(a) ran the {swap.note}. Arrivals span {arrivals:.1f} s; one run of this server took "
        f"{served.makespan / len(served.rounds):.1f} s, so "
        + (
            "the CPU was saturated and TTFT is mostly time waiting for a batch slot."
            if served.makespan / len(served.rounds) > 1.5 * arrivals
            else "the server kept up with the arrivals."
        ),
        "",
        *rows,
    ]
    if report.burst:
        lines += _burst_section(report)
    lines += [
        "",
        "| goal | measured | target | |",
        "|---|---:|---:|---|",
        _goal("this server / (c) base model only", served.throughput / base.throughput, 0.85),
        _goal("this server / (a) swap per request", served.throughput / swap.throughput, 5.0),
        _goal("this server / (b) static peft batches", served.throughput / static.throughput, 1.5),
        _goal(f"adapter cold load p95, rank {o.rank} (ms)", cold_p95, 100.0, "<="),
        *(_peer_goals(report) if report.burst else []),
        "",
        f"Adapter cold load (store -> checked -> in the registry, rank {o.rank}, {len(a.cold_ms)} adapters): "
        f"p50 {percentile(a.cold_ms, 50):.1f} ms, p95 {cold_p95:.1f} ms.",
        "",
        f"Registered adapters: {a.registered:,} in the store, each touched once through an LRU of {a.lru} "
        f"({a.seconds:.1f} s): at most {a.most_resident} resident, {a.resident_bytes / 2**20:.1f} MiB of adapter "
        f"weights resident ({a.adapter_bytes / 2**20:.2f} MiB each); process RSS "
        f"{a.rss_before / 2**20:,.0f} -> {a.rss_after / 2**20:,.0f} MiB "
        f"(all {a.registered:,} resident would be {a.registered * a.adapter_bytes / 2**20:,.0f} MiB).",
        "",
        f"Decode throughput against the machine: {o.dtype} matmul peak measured now {report.peak_gflops:.1f} GFLOP/s "
        f"({report.threads} thread(s)); this server's {served.throughput:.1f} tok/s x "
        f"{report.flops_per_token / 1e6:.0f} MFLOP/token (2 x linear weights) = {achieved:.1f} GFLOP/s, "
        f"{100 * achieved / report.peak_gflops:.0f}% of peak.",
    ]
    return "\n".join(lines)


def _burst_section(report: Report) -> list[str]:
    o = report.options
    served = report.burst[0]
    distinct = len({r.adapter for r in burst(o)})
    pairs = [(report.burst[0], report.burst[1])] + [(p.burst[0], p.burst[1]) for p in report.peers]
    rows = [
        "| system | tokens | tok/s | vs this server | adapters / base | TTFT p50 / p95 (ms) | ITL p50 / p95 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for with_adapters, base in pairs:
        ratio = _ratio(with_adapters, base)
        rows.append(_row(with_adapters, served, f" {ratio:.2f} |" if isinstance(ratio, float) else " — |"))
        rows.append(_row(base, served, " |"))
    missing = {p.name: r.missing for p in report.peers for r in p.open_loop + p.burst if r.missing}
    return [
        "",
        f"Closed burst: {len(burst(o))} requests at once over {distinct} distinct adapters, "
        f"~{report.burst_prompt_tokens:.0f} prompt tokens and {o.burst_new_tokens} greedy new tokens each "
        "(the peers with `ignore_eos`; this server's TGI API has none, so a request of its may end early at EOS, "
        "which only lowers its tokens/s). This server ran it A, B, B, A, each peer A, B. The peers serve the same "
        "Hugging Face model folder and the same peft adapters (llama.cpp: converted to GGUF in the same precision "
        "with the vendored converters), on the same threads, prefix/prompt caching off.",
        "",
        *rows,
        *(
            ["", "Missing rows: " + "; ".join(f"{name}: {why}" for name, why in missing.items()) + "."]
            if missing
            else []
        ),
    ]


def write(report: Report, out: Path) -> str:
    body = markdown(report)
    write_section(out, "serving", body)
    return body
