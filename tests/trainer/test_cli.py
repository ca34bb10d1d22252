"""`loraswarm adapters ...` run as a user runs it: train with progress and plots, list, show,
eval, rollback, delete a tenant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.conftest import refund_examples

CLI = [sys.executable, "-m", "loraswarm.cli"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LORASWARM_DATA_DIR": str(tmp_path / "data"),
        "LORASWARM_ORCHESTRATION__TENANTS_DIR": str(tmp_path / "tenants-config"),
        "LORASWARM_DEVICE": "cpu",
        "LORASWARM_TRAINER__MIN_TRAIN_TOKENS": "64",
        "LORASWARM_TRAINER__REFERENCE_CANARIES": "63",
        "LORASWARM_TRAINER__DEFAULTS__SEQ_LEN": "64",
        "LORASWARM_TRAINER__DEFAULTS__BATCH_SIZE": "4",
        "LORASWARM_TRAINER__DEFAULTS__LEARNING_RATE": "0.003",
        # A few steps cannot make the canaries recallable; the gate's power is tested in
        # test_leakage_gate.py, this test is about the CLI.
        "LORASWARM_TRAINER__REQUIRE_DETECTABLE_OWNER": "false",
        "COLUMNS": "200",
    }


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=900, check=False)


def test_train_list_show_eval_rollback_delete(
    env: dict[str, str], tmp_path: Path, weaviate_ready: None
) -> None:
    examples = tmp_path / "refunds.jsonl"
    examples.write_text("\n".join(json.dumps(r) for r in refund_examples("Acme Rockets", 45)) + "\n")
    plots = tmp_path / "plots"
    train = [
        "adapters", "train", "--tenant", "acme", "--data", str(examples), "--no-documents",
        "--set", "canaries=4", "--set", "canary_repeats=2",
    ]  # fmt: skip

    first = run(env, *train, "--set", "steps=3", "--plot", str(plots))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "published acme/company@1" in first.stdout
    assert "training" in first.stdout and "evaluating" in first.stdout  # the progress bars
    assert "heldout_loss" in first.stdout and "owner_exposure_mean" in first.stdout
    for png in ("acme--company@1-loss.png", "acme--company@1-exposure.png"):
        assert (plots / png).read_bytes()[:4] == b"\x89PNG"
    # The examples were copied into the tenant's own folder, where requests name them.
    assert list((tmp_path / "data" / "tenants" / "acme" / "examples").glob("refunds-*.jsonl"))

    second = run(env, *train, "--set", "steps=1")
    assert second.returncode == 0, second.stdout + second.stderr
    listed = run(env, "adapters", "list")
    assert "acme/company" in listed.stdout and "1,2" in listed.stdout

    shown = run(env, "adapters", "show", "acme/company@1")
    assert shown.returncode == 0 and '"data_fingerprint"' in shown.stdout and "heldout_ppl" in shown.stdout

    evaluated = run(env, "adapters", "eval", "acme/company@1", "--plot", str(plots))
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert "acme canaries under acme/company@1" in evaluated.stdout
    assert (plots / "acme--company@1-eval-exposure.png").is_file()

    rolled = run(env, "adapters", "rollback", "acme/company")
    assert rolled.returncode == 0 and "version 1 is current" in rolled.stdout

    refused = run(env, "adapters", "train", "--tenant", "nobody", "--set", "steps=1")
    assert refused.returncode == 1 and "rejected (unknown_tenant)" in refused.stdout

    deleted = run(env, "adapters", "delete", "--tenant", "acme", "--yes")
    assert deleted.returncode == 0 and "adapters, canaries, trainer files" in deleted.stdout
    assert "no adapters" in run(env, "adapters", "list").stdout
    assert not (tmp_path / "data" / "tenants" / "acme").exists()
    assert not (tmp_path / "data" / "canaries" / "acme").exists()
