"""Made-up rows for the serving report's tests (tests/bench, tests/model_server): a run of ten
tokens at a fixed step, and a report of such runs with the machine figures held fixed."""

from __future__ import annotations

from typing import Any

from loraswarm.bench.drive import Outcome, RunResult
from loraswarm.bench.serving import AdapterFigures, Options, Report


def run_result(name: str, step: float) -> RunResult:
    """One request's ten tokens, the k-th at `step` x k seconds after its arrival at 0."""
    return RunResult(name, [Outcome(arrival=0.0, tokens=[step * (k + 1) for k in range(10)])], note="n")


def report(runs: list[RunResult], figures: AdapterFigures, repeats: int, **rows: Any) -> Report:
    """The report of `runs` (this server, its base model, swap per request, static peft batches)
    on a fixed machine: 90 GB/s, 3e8 weight bytes, one-token prompt and decode shapes, 60 s."""
    return Report(Options(), runs, figures, 90.0, 3e8, repeats, (1, 1, 1), (1, 1, 1), 60.0, **rows)
