"""`loraswarm bench serving`'s workload and accounting (the measurement itself runs as a command)."""

from __future__ import annotations

from pathlib import Path

from loraswarm.bench.drive import Outcome, RunResult
from loraswarm.bench.serving import (
    AdapterFigures,
    Options,
    _useful,
    burst,
    workload,
)
from loraswarm.bench.serving_report import markdown
from loraswarm.shared.settings import Settings
from tests.bench.serving_results import report as serving_report
from tests.bench.serving_results import run_result as run


def test_the_workload_is_open_loop_over_distinct_adapters() -> None:
    options = Options(requests=64, adapters=32, rate=8.0, min_new_tokens=12, max_new_tokens=36)
    requests = workload(options)
    assert len(requests) == 64
    assert {r.adapter for r in requests} == set(range(32))
    arrivals = [r.arrival_s for r in requests]
    assert arrivals == sorted(arrivals) and arrivals[0] > 0
    assert 4 < arrivals[-1] < 16  # ~64 / 8 s
    assert all(12 <= r.max_new_tokens <= 36 for r in requests)
    assert workload(options) == requests  # seeded: every system gets the same requests


def test_the_burst_is_every_request_at_once_over_distinct_adapters() -> None:
    requests = burst(Options(burst=32, adapters=32, burst_new_tokens=64))
    assert len(requests) == 32 and {r.adapter for r in requests} == set(range(32))
    assert all(r.arrival_s == 0.0 and r.max_new_tokens == 64 for r in requests)
    assert burst(Options()) == requests  # seeded: every system gets the same prompts


def test_useful_tokens_stop_at_the_requests_own_limit_and_eos() -> None:
    assert _useful([5, 6, 7, 8], 3, {2}) == 3
    assert _useful([5, 2, 7, 8], 4, {2}) == 2


def test_throughput_counts_tokens_over_the_makespan_of_every_round() -> None:
    one = RunResult("x", [Outcome(arrival=0.0, tokens=[1.0, 2.0]), Outcome(arrival=1.0, tokens=[3.0, 4.0])])
    two = RunResult("x", [Outcome(arrival=10.0, tokens=[12.0, 14.0])])
    both = one.merged(two)
    assert both.tokens == 6
    assert both.makespan == 4.0 + 4.0
    assert both.throughput == 6 / 8
    assert both.ttft() == [1.0, 2.0, 2.0]
    assert both.itl() == [1.0, 1.0, 2.0]


def test_the_report_states_every_goal() -> None:
    figures = AdapterFigures(
        [20.0, 30.0], 1000, 64, 64, 64 << 20, 1 << 20, 1 << 30, (1 << 30) + (70 << 20), 9.0, 3e8
    )
    report = serving_report([run("s", 0.1), run("c", 0.09), run("a", 1.0), run("b", 0.3)], figures, 1)
    text = markdown(report)
    for needle in (
        "/ (c) base model only | 0.90 | >= 0.85 | met",
        "/ (a) swap per request | 10.00 | >= 5 | met",
        "/ (b) static peft batches | 3.00 | >= 1.5 | met",
        "cold load p95",
        "1,000 in the store",
        "at most 64 resident",
        "% of peak",
    ):
        assert needle in text, needle


def test_bench_dtype_runs_both_formats_on_one_workload_and_reports_their_ratio(tmp_path: Path) -> None:
    from loraswarm.bench import dtype

    options = dtype.Options(requests=2, prompt_tokens=40, new_tokens=4)
    report = dtype.run(Settings(), options)
    assert [r.dtype for r in report.runs] == ["float32", "bfloat16"]
    for r in report.runs:
        assert r.prompt_tokens >= 2 * 40 and r.prefill_seconds > 0 and r.steps >= 3
        assert all(1 <= len(t) <= 4 for t in r.tokens)  # an end-of-text token may come first
    assert 0 <= report.agreement <= 1
    out = tmp_path / "BENCHMARKS.md"
    dtype.write(report, out)
    text = out.read_text()
    assert "<!-- bench:dtype -->" in text and "| float32 |" in text and "| bfloat16 |" in text
    assert "bf16 / fp32: prefill" in text
