"""`loraswarm bench dtype`: the model server's engine in fp32 and in bf16 on this machine.

The same workload runs through the engine in each number format, one after the other in one
process: `requests` prompts of about `prompt_tokens` tokens arrive at once, each asking for
`new_tokens` greedy tokens (the demo's shape: a burst of retrieval-sized prompts, short answers).
Measured per format: prefill throughput (prompt tokens per second of prefill), the mean decode
step, and the wall time of the whole burst; and how often bf16's greedy tokens equal fp32's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loraswarm.bench.machine import describe
from loraswarm.bench.report import write_section
from loraswarm.shared.settings import Settings

if TYPE_CHECKING:
    from loraswarm.services.model_server.server import ModelServer

WORDS = [
    "refund",
    "policy",
    "customer",
    "order",
    "delivery",
    "warehouse",
    "ticket",
    "support",
    "invoice",
    "contract",
    "service",
    "visit",
    "turbine",
    "payroll",
    "holiday",
    "manager",
    "approval",
    "process",
    "steps",
    "handbook",
    "notes",
]


@dataclass(frozen=True)
class Options:
    requests: int = 8
    prompt_tokens: int = 480
    new_tokens: int = 48
    threads: int = 0


@dataclass(frozen=True)
class Run:
    dtype: str
    prompt_tokens: int
    prefill_seconds: float
    steps: int
    step_seconds: float
    wall_seconds: float
    tokens: list[list[int]]

    @property
    def prefill_rate(self) -> float:
        return self.prompt_tokens / self.prefill_seconds

    @property
    def step_ms(self) -> float:
        return 1000 * self.step_seconds / max(self.steps, 1)


@dataclass(frozen=True)
class Report:
    machine: str
    options: Options
    runs: list[Run]
    native_bf16: bool

    @property
    def agreement(self) -> float:
        """Share of generated positions where bf16 chose fp32's token (until their first difference)."""
        fp32, bf16 = self.runs
        same = total = 0
        for a, b in zip(fp32.tokens, bf16.tokens, strict=True):
            total += len(a)
            for x, y in zip(a, b, strict=False):
                if x != y:
                    break
                same += 1
        return same / max(total, 1)


def prompts(options: Options) -> list[str]:
    """Distinct prompts of about `prompt_tokens` tokens (one word is about one token here)."""
    return [
        " ".join(WORDS[(i * 7 + j * (i + 3)) % len(WORDS)] for j in range(options.prompt_tokens))
        for i in range(options.requests)
    ]


async def _burst(server: ModelServer, texts: list[str], new_tokens: int) -> list[list[int]]:
    from loraswarm.services.model_server.schemas import GenerateParameters
    from loraswarm.services.model_server.validation import validate

    async def one(text: str) -> list[int]:
        valid = validate(
            text,
            GenerateParameters(max_new_tokens=new_tokens, stop=[]),
            limits=server.limits,
            tokenizer=server.tokenizer,
        )
        generation = await server.complete(await server.prepare(valid, (), None))
        return [t.id for t in generation.tokens]

    return list(await asyncio.gather(*(one(t) for t in texts)))


def measure(settings: Settings, dtype: str, options: Options) -> Run:
    from loraswarm.services.model_server.server import ModelServer

    s = settings.model_copy(deep=True)
    s.device = "cpu"
    s.model_server.dtype = dtype  # type: ignore[assignment]
    s.model_server.threads = options.threads
    s.model_server.max_input_tokens = max(s.model_server.max_input_tokens, options.prompt_tokens + 64)
    s.model_server.max_total_tokens = max(
        s.model_server.max_total_tokens, s.model_server.max_input_tokens + options.new_tokens
    )
    server = ModelServer.load(s)
    server.start()
    try:
        texts = prompts(options)
        asyncio.run(_burst(server, texts[:1], 2))  # warm-up: first-call allocations
        before = dataclasses.replace(server.engine.stats)  # the engine keeps counting in place
        started = time.perf_counter()
        tokens = asyncio.run(_burst(server, texts, options.new_tokens))
        wall = time.perf_counter() - started
        after = server.engine.stats
        return Run(
            dtype,
            after.prompt_tokens - before.prompt_tokens,
            after.prefill_seconds - before.prefill_seconds,
            after.steps - before.steps,
            after.step_seconds - before.step_seconds,
            wall,
            tokens,
        )
    finally:
        server.stop()


def run(settings: Settings, options: Options) -> Report:
    from loraswarm.shared.models import native_cpu_bf16

    runs = [measure(settings, dtype, options) for dtype in ("float32", "bfloat16")]
    return Report(describe(), options, runs, native_cpu_bf16())


def markdown(report: Report) -> str:
    o = report.options
    fp32, bf16 = report.runs
    rows = "\n".join(
        f"| {r.dtype} | {r.prefill_rate:,.0f} | {r.step_ms:.1f} | {r.wall_seconds:.1f} |" for r in report.runs
    )
    native = "has" if report.native_bf16 else "lacks"
    return f"""## Serving number format: fp32 vs bf16 on the CPU (`loraswarm bench dtype`)

Machine: {report.machine}. The CPU {native} native bf16 arithmetic (AVX512-BF16 or AMX), so
`model_server.dtype=auto` serves in {"bf16" if report.native_bf16 else "fp32"} here.

Workload: {o.requests} prompts of {fp32.prompt_tokens // o.requests} tokens arriving at once, {o.new_tokens}
greedy new tokens each, base model, through the model server's engine in this process; fp32 first,
then bf16, in the same run (fp32 is the baseline).

| format | prefill tokens/s | decode step (ms, mean) | whole burst (s) |
|---|---:|---:|---:|
{rows}

bf16 / fp32: prefill {bf16.prefill_rate / fp32.prefill_rate:.2f}× the throughput, decode step
{fp32.step_ms / bf16.step_ms:.2f}× as fast, whole burst {fp32.wall_seconds / bf16.wall_seconds:.2f}× as fast.
Greedy tokens equal to fp32's until the first difference: {report.agreement:.0%} of positions
(bf16 keeps about 3 significant digits; the model-server tests bound its logprob drift, and the
ones that compare with peft's fp32 models pin fp32).
"""


def write(report: Report, path: Path) -> str:
    body = markdown(report)
    write_section(path, "dtype", body)
    return body
