"""`loraswarm bench decode`: one decode step of a full batch, timed, profiled, and set against the machine.

The step is the model server's own (`BatchingEngine`, in this thread): `rows` sequences, each with
its own rank-r adapter on q_proj and v_proj (the closed burst of `bench serving`: 32 rows, 32
adapters, ~70 prompt tokens), prefilled together, then `steps` decode steps, each one token for
every row. Measured in one process, in the order A B B A so drift hits both alike: A the step as
served, B the same rows on the base model alone.

Then a profile of A (one more pass, with timing hooks on the modules, which cost time of their
own: read its shares, not its sum, against the timed step) splits a step into the base weights'
matmuls, the LoRA deltas, the attention core (rotary, KV-cache write, scores, softmax, values),
the MLP's activation, the norms, the LM head, choosing and emitting tokens, and what is left
(Python and framework glue). And the floor: the same matmuls alone, each timed on
its own at this batch size, and the weights read once at this machine's copy bandwidth.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from loraswarm.bench import dtype as dtype_bench
from loraswarm.bench.machine import describe
from loraswarm.bench.report import write_section
from loraswarm.shared.settings import Settings

if TYPE_CHECKING:
    from loraswarm.services.model_server.adapters import LoadedAdapter
    from loraswarm.services.model_server.server import ModelServer

GOAL_MS = 30.0  # issue 18: a decode step of 32 rows in bf16


@dataclass(frozen=True)
class Options:
    rows: int = 32
    prompt_tokens: int = 70
    steps: int = 64
    rank: int = 8
    profile_steps: int = 16
    threads: int = 0
    dtype: str = "auto"  # the model server's setting: bf16 where the CPU computes it natively


@dataclass(frozen=True)
class Config:
    label: str
    adapters: bool


SERVED = Config("an adapter per row", True)
BASE = Config("base model only", False)
CONFIGS = (SERVED, BASE)

# The profile's rows, in the order the report prints them.
CATEGORIES = (
    "matmuls of the base weights",
    "LoRA deltas",
    "attention core (rotary, KV write, scores, softmax, values)",
    "MLP activation",
    "norms",
    "embedding",
    "decoder glue (Python, residuals, rotary table)",
    "LM head",
    "choosing and emitting tokens",
    "step set-up (inputs, mask, plans)",
)


@dataclass
class Report:
    machine: str
    options: Options
    dtype: str
    threads: int
    native_bf16: bool
    steps: dict[str, list[float]] = field(default_factory=dict)  # config label -> seconds per step
    profile: dict[str, float] = field(default_factory=dict)  # category -> ms per step
    profiled_step_ms: float = 0.0
    floor_matmul_ms: float = 0.0
    weight_bytes: int = 0
    copy_gb_s: float = 0.0
    gflop_per_step: float = 0.0

    def median_ms(self, label: str) -> float:
        return 1000 * statistics.median(self.steps[label])


# ---------------------------------------------------------------- the workload


def random_adapters(server: ModelServer, count: int, rank: int) -> list[LoadedAdapter]:
    """`count` rank-`rank` adapters on every q_proj and v_proj; their values do not change a step's cost."""
    from loraswarm.services.model_server.adapters import LoadedAdapter
    from loraswarm.services.model_server.lora import LoraWeights

    generator = torch.Generator().manual_seed(0)
    adapters = []
    for i in range(count):
        weights = {}
        for name, module in server.lora_modules.items():
            if name.endswith(("q_proj", "v_proj")):
                a = torch.randn(rank, module.in_features, generator=generator) * 0.02  # (r, in)
                b = torch.randn(module.out_features, rank, generator=generator) * 0.02  # (out, r)
                weights[name] = LoraWeights.from_peft(
                    a, b, 2.0, device=server.device.name, dtype=server.device.dtype
                )
        nbytes = sum(w.nbytes for w in weights.values())
        adapters.append(
            LoadedAdapter(
                f"bench-{i}/decode@1", f"bench-{i}", "decode", "1", f"decode-{i}", weights, rank, nbytes, 0.0
            )
        )
    return adapters


def _requests(server: ModelServer, options: Options, adapters: list[LoadedAdapter] | None) -> list[Any]:
    from loraswarm.services.model_server.engine import GenerationRequest
    from loraswarm.services.model_server.sampling import SamplingParams

    texts = dtype_bench.prompts(
        dtype_bench.Options(requests=options.rows, prompt_tokens=options.prompt_tokens)
    )
    return [
        GenerationRequest(
            list(server.tokenizer(text)["input_ids"]),
            SamplingParams(),
            options.steps + options.profile_steps + 2,  # never ends by length inside a pass
            [],
            lambda event: None,
            (adapters[i],) if adapters else (),
        )
        for i, text in enumerate(texts)
    ]


def _pass(
    server: ModelServer,
    options: Options,
    config: Config,
    adapters: list[LoadedAdapter],
    steps: int,
    clock: _Clock | None = None,
) -> list[tuple[int, float]]:
    """Prefill the rows, then `steps` decode steps (with `clock`'s hooks on, when given); each
    step's rows and seconds (a row that meets EOS leaves, and the steps after it have fewer)."""
    engine = server.engine
    engine.prefill_by_hand(_requests(server, options, adapters if config.adapters else None))
    times = []
    try:
        with clock.on(server) if clock is not None else nullcontext():
            for _ in range(steps):
                started = time.perf_counter()
                rows = engine.decode_by_hand()
                times.append((rows, time.perf_counter() - started))
    finally:
        engine.clear_by_hand()
    return times


# ---------------------------------------------------------------- the profile


class _Clock:
    """Wall time spent inside the model's modules, by category (forward pre/post hooks)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._started: dict[int, float] = {}
        self._handles: list[Any] = []

    def _watch(self, module: torch.nn.Module, category: str) -> None:
        def before(m: torch.nn.Module, args: Any) -> None:
            self._started[id(m)] = time.perf_counter()

        def after(m: torch.nn.Module, args: Any, output: Any) -> None:
            self.seconds[category] += time.perf_counter() - self._started.pop(id(m))

        self._handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    @contextmanager
    def on(self, server: ModelServer) -> Iterator[None]:
        from loraswarm.services.model_server.lora import BatchedLoraLinear

        engine = server.engine
        decoder: Any = engine.decoder
        self._watch(decoder, "decoder")
        self._watch(engine.lm_head, "lm_head")
        self._watch(decoder.embed_tokens, "embed")
        self._watch(decoder.norm, "norm")
        for layer in decoder.layers:
            self._watch(layer.self_attn, "attention_module")
            self._watch(layer.mlp, "mlp_module")
            self._watch(layer.input_layernorm, "norm")
            self._watch(layer.post_attention_layernorm, "norm")
            for part, where in ((layer.self_attn, "attn"), (layer.mlp, "mlp")):
                for child in part.children():
                    if isinstance(child, BatchedLoraLinear):
                        self._watch(child, f"wrapper_{where}")
                        self._watch(child.base, f"linear_{where}")
        advance = engine._advance

        def timed_advance(*args: Any) -> None:
            started = time.perf_counter()
            advance(*args)
            self.seconds["advance"] += time.perf_counter() - started

        engine._advance = timed_advance  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            del engine._advance  # the instance attribute; the class's method shows again
            for handle in self._handles:
                handle.remove()
            self._handles = []


def _categories(seconds: dict[str, float], step_total: float) -> dict[str, float]:
    """Seconds per category from the hooks' totals (nested modules subtracted from their parents)."""
    s = defaultdict(float, seconds)
    linear = s["linear_attn"] + s["linear_mlp"]
    wrappers = s["wrapper_attn"] + s["wrapper_mlp"]
    return {
        "matmuls of the base weights": linear,
        "LoRA deltas": wrappers - linear,
        "attention core (rotary, KV write, scores, softmax, values)": s["attention_module"]
        - s["wrapper_attn"],
        "MLP activation": s["mlp_module"] - s["wrapper_mlp"],
        "norms": s["norm"],
        "embedding": s["embed"],
        "decoder glue (Python, residuals, rotary table)": s["decoder"]
        - s["attention_module"]
        - s["mlp_module"]
        - s["norm"]
        - s["embed"],
        "LM head": s["lm_head"],
        "choosing and emitting tokens": s["advance"],
        "step set-up (inputs, mask, plans)": step_total - s["decoder"] - s["lm_head"] - s["advance"],
    }


def profile(
    server: ModelServer, options: Options, config: Config, adapters: list[LoadedAdapter]
) -> tuple[dict[str, float], float]:
    """Milliseconds per step by category, and the hooked steps' mean (ms)."""
    clock = _Clock()
    times = _pass(server, options, config, adapters, options.profile_steps, clock)
    steps, total = max(len(times), 1), sum(t for _, t in times)
    return {k: 1000 * v / steps for k, v in _categories(clock.seconds, total).items()}, 1000 * total / steps


# ---------------------------------------------------------------- the floor


def _time(fn: Callable[[], Any], repeat: int) -> float:
    for _ in range(3):
        fn()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def matmul_floor(server: ModelServer, rows: int) -> tuple[float, int, float]:
    """Seconds of the step's matmuls alone (each linear shape timed on its own at `rows` rows, times
    how often the model has it), the weights' bytes, and GFLOP per step."""
    from loraswarm.bench.serving import flops_per_token

    shapes: dict[tuple[int, int], int] = defaultdict(int)
    weight_bytes = 0
    linears = [m.base for m in server.lora_modules.values()] + [server.engine.lm_head]
    for linear in linears:
        shapes[(linear.in_features, linear.out_features)] += 1
        weight_bytes += linear.weight.numel() * linear.weight.element_size()
    seconds = 0.0
    dtype = server.device.dtype
    with torch.inference_mode():
        for (n_in, n_out), count in shapes.items():
            x = torch.randn(rows, n_in, dtype=dtype)
            w = torch.randn(n_out, n_in, dtype=dtype)
            seconds += count * _time(partial(torch.nn.functional.linear, x, w), 20)
    return seconds, weight_bytes, rows * flops_per_token(server.model) / 1e9


def copy_bandwidth() -> float:
    """GB/s of a 256 MiB copy (read + write counted), this machine's memory rate for large reads."""
    src = torch.empty(2**28, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    seconds = _time(lambda: dst.copy_(src), 5)
    return 2 * src.numel() / seconds / 1e9


# ---------------------------------------------------------------- the run


def run(settings: Settings, options: Options) -> Report:
    from loraswarm.services.model_server.server import ModelServer
    from loraswarm.shared import torch_threads
    from loraswarm.shared.models import native_cpu_bf16

    s = settings.model_copy(deep=True)
    s.device = "cpu"
    s.model_server.dtype = options.dtype  # type: ignore[assignment]
    s.model_server.max_batch_size = max(s.model_server.max_batch_size, options.rows)
    server = ModelServer.load(s)  # not started: this thread steps the engine
    threads = torch_threads.use(options.threads)
    report = Report(
        describe(), options, str(server.device.dtype).removeprefix("torch."), threads, native_cpu_bf16()
    )
    adapters = random_adapters(server, options.rows, options.rank)
    with torch.inference_mode():
        _pass(server, options, SERVED, adapters, 4)  # warm-up: first-call allocations
        for config in (*CONFIGS, *reversed(CONFIGS)):
            full = [
                t
                for rows, t in _pass(server, options, config, adapters, options.steps)
                if rows == options.rows
            ]
            report.steps.setdefault(config.label, []).extend(full)
        report.profile, report.profiled_step_ms = profile(server, options, SERVED, adapters)
    floor, report.weight_bytes, report.gflop_per_step = matmul_floor(server, options.rows)
    report.floor_matmul_ms = 1000 * floor
    report.copy_gb_s = copy_bandwidth()
    return report


def markdown(report: Report) -> str:
    o = report.options
    rows = []
    for config in CONFIGS:
        times = sorted(report.steps[config.label])
        p90 = 1000 * times[int(0.9 * (len(times) - 1))]
        median = report.median_ms(config.label)
        rows.append(
            f"| {config.label} | {len(times)} | {median:.1f} | {p90:.1f} | {o.rows / median * 1000:,.0f} |"
        )
    profiled = sum(report.profile.values())
    profile_rows = [
        f"| {c} | {report.profile[c]:.1f} | {report.profile[c] / profiled:.0%} |" for c in CATEGORIES
    ]
    served, base = report.median_ms(SERVED.label), report.median_ms(BASE.label)
    weights_ms = report.weight_bytes / (report.copy_gb_s * 1e9) * 1000
    bf16 = report.dtype == "bfloat16"
    verdict = "met" if served <= GOAL_MS and bf16 else "**missed**"
    floor = report.floor_matmul_ms
    bound = (
        f"Arithmetic, not memory, bounds this step here: the matmuls alone are {floor / served:.0%} of the "
        f"step, and the rest ({served - floor:.1f} ms) is what overhead work could cut."
        if floor > weights_ms
        else "Reading the weights, not arithmetic, bounds this step here."
    )
    if floor > GOAL_MS:
        bound += f" The matmuls alone take longer than the {GOAL_MS:.0f} ms goal on this CPU."
    if not bf16:
        why = "" if report.native_bf16 else "; this CPU has no native bf16"
        verdict = f"not measured (the step ran in {report.dtype}{why})"
    return f"""## Decode step (`loraswarm bench decode`)

Machine: {report.machine}; {report.threads} torch thread(s), {report.dtype} (the CPU {"computes" if report.native_bf16 else "lacks"} native bf16).
Workload: {o.rows} rows prefilled together (prompts of ~{o.prompt_tokens} tokens), each with its own rank-{o.rank} adapter on
q_proj and v_proj (the closed burst of `bench serving`), then {o.steps} decode steps per pass through the model server's
engine in this process; the passes ran A B B A and each row adds both of its passes.

| step | steps timed | median (ms) | p90 (ms) | tokens/s (rows / median step) |
|---|---:|---:|---:|---:|
{chr(10).join(rows)}

Adapter rows / base rows: the step takes {served / base:.2f}× as long.

Profile of the first row, milliseconds per step (one more pass of {o.profile_steps} steps, with timing hooks on the
modules, which cost time of their own; these steps took {report.profiled_step_ms:.1f} ms against the median above):

| part of the step | ms | share |
|---|---:|---:|
{chr(10).join(profile_rows)}

The floor on this machine: the step's matmuls ({report.gflop_per_step:.1f} GFLOP for {o.rows} rows, LM head included), each
shape timed alone at {o.rows} rows, take **{report.floor_matmul_ms:.1f} ms** ({report.gflop_per_step / report.floor_matmul_ms * 1000:.0f} GFLOP/s);
reading the {report.weight_bytes / 1e6:.0f} MB of weights once at the measured copy rate ({report.copy_gb_s:.1f} GB/s) takes
{weights_ms:.1f} ms. {bound}

Goal (issue 18): a decode step of 32 rows ≤ {GOAL_MS:.0f} ms in bf16: {served:.1f} ms, {verdict}.
"""


def write(report: Report, path: Path) -> str:
    body = markdown(report)
    write_section(path, "decode", body)
    return body
