"""`loraswarm bench decode` on the real model, tiny: the step's parts add up and none is negative.

The timings themselves are the benchmark's business (BENCHMARKS.md); this checks the accounting:
the profile's nesting (a module's time minus its children's), the by-hand stepping the bench
uses, and that the report states the goal and the floor.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from loraswarm.bench.decode import BASE, CATEGORIES, SERVED, Options, markdown, run, write
from loraswarm.services.model_server.engine import GenerationRequest
from loraswarm.services.model_server.sampling import SamplingParams
from loraswarm.shared.settings import Settings

OPTIONS = Options(rows=3, prompt_tokens=12, steps=3, rank=4, profile_steps=2, threads=1, dtype="float32")


@pytest.fixture(scope="module")
def report():  # type: ignore[no-untyped-def]
    return run(Settings(device="cpu"), OPTIONS)


def test_every_configuration_is_timed_in_both_passes(report) -> None:  # type: ignore[no-untyped-def]
    for config in (SERVED, BASE):
        steps = report.steps[config.label]
        assert 1 <= len(steps) <= 2 * OPTIONS.steps  # a row meeting EOS drops its pass's later steps
        assert all(t > 0 for t in steps)


def test_the_profile_splits_the_step_into_parts_that_add_up(report) -> None:  # type: ignore[no-untyped-def]
    assert set(report.profile) == set(CATEGORIES)
    negative = {k: v for k, v in report.profile.items() if v < 0}
    assert not negative, negative  # a parent module timed for less than its children: nesting is wrong
    assert sum(report.profile.values()) == pytest.approx(report.profiled_step_ms, rel=1e-6)
    assert report.profile["matmuls of the base weights"] > 0 and report.profile["LM head"] > 0
    assert report.profile["LoRA deltas"] > 0  # every row has an adapter on q_proj and v_proj


def test_the_floor_counts_the_models_matmuls(report) -> None:  # type: ignore[no-untyped-def]
    # SmolLM2-135M: 30 layers of 7 linears (3.54M weights per layer) and the 28.3M-weight LM head.
    assert report.gflop_per_step == pytest.approx(2 * OPTIONS.rows * (30 * 3_538_944 + 28_311_552) / 1e9)
    assert report.weight_bytes == 4 * (30 * 3_538_944 + 28_311_552)  # fp32
    assert report.floor_matmul_ms > 0 and report.copy_gb_s > 0


def test_the_report_states_the_goal_and_writes_its_section(report, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    text = markdown(report)
    assert "## Decode step (`loraswarm bench decode`)" in text
    assert "not measured (the step ran in float32" in text  # the goal is stated for bf16
    out = tmp_path / "BENCHMARKS.md"
    write(report, out)
    assert "<!-- bench:decode -->" in out.read_text()


def test_stepping_by_hand_is_refused_while_the_engine_thread_runs(served) -> None:  # type: ignore[no-untyped-def]
    engine = served.server.engine
    assert engine._thread is not None
    request = GenerationRequest([1, 2, 3], SamplingParams(), 1, [], lambda event: None)
    with pytest.raises(RuntimeError, match="engine's thread is running"):
        engine.prefill_by_hand([request])
    with pytest.raises(RuntimeError, match="engine's thread is running"):
        engine.decode_by_hand()
    assert isinstance(engine._thread, threading.Thread)
