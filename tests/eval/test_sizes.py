"""The eval's sizes reach the trainer: the recipe's quality-gate bound, and the trainer's own default otherwise."""

from __future__ import annotations

from pathlib import Path

from loraswarm.eval.runner import EvalConfig, eval_settings
from loraswarm.eval.sizes import FULL, MEDIUM, QUICK, RECIPE_MAX_QUALITY_REGRESSION
from loraswarm.shared.settings import Settings


def _config(tmp_path: Path, bound: float | None) -> EvalConfig:
    return EvalConfig(tmp_path / "c", tmp_path / "q.jsonl", tmp_path / "out", max_quality_regression=bound)


def test_the_recipes_sizes_carry_their_gate_bound_and_quick_keeps_the_trainers() -> None:
    assert FULL.max_quality_regression == MEDIUM.max_quality_regression == RECIPE_MAX_QUALITY_REGRESSION
    assert QUICK.max_quality_regression is None


def test_eval_settings_apply_the_bound_only_when_a_size_names_one(tmp_path: Path) -> None:
    default = Settings().trainer.max_quality_regression
    assert eval_settings(_config(tmp_path, None)).trainer.max_quality_regression == default
    assert eval_settings(_config(tmp_path, 0.25)).trainer.max_quality_regression == 0.25
    assert default != 0.25  # else the second check could not tell the two apart
