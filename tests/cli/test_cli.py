"""`loraswarm publish`, `tail`, `schemas export` and `bench events`, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from loraswarm.shared.events import RecommendationRequested
from tests.conftest import TOPIC_PREFIX
from tests.samples import sample_events

CLI = [sys.executable, "-m", "loraswarm.cli"]


@pytest.fixture
def env(kafka_bootstrap: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LORASWARM_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "LORASWARM_KAFKA__TOPIC_PREFIX": f"{TOPIC_PREFIX}cli{uuid.uuid4().hex[:8]}.",
        "LORASWARM_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "200",
    }


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def test_publish_validates_then_tail_shows_the_event(env: dict[str, str], tmp_path: Path) -> None:
    event = sample_events()[0]
    assert isinstance(event, RecommendationRequested)
    path = tmp_path / "request.json"
    path.write_text(event.model_dump_json())
    published = run(env, "publish", "recommendation.requested", str(path))
    assert published.returncode == 0, published.stderr
    assert str(event.event_id) in published.stdout

    shown = run(env, "tail", "recommendation.requested", "--from-beginning", "--max", "1", "--timeout", "20")
    assert shown.returncode == 0, shown.stderr
    assert "recommendation.requested" in shown.stdout
    assert event.question in shown.stdout


def test_publish_refuses_an_invalid_event_and_says_why(env: dict[str, str]) -> None:
    bad = json.dumps({"type": "recommendation.requested", "tenant_id": "acme"})
    result = run(env, "publish", "recommendation.requested", "-", stdin=bad)
    assert result.returncode == 1
    assert "not published (validation)" in result.stderr
    assert "question" in result.stderr
    wrong_topic = run(env, "publish", "retrieval.requested", "-", stdin=sample_events()[0].model_dump_json())
    assert wrong_topic.returncode == 1
    assert "does not belong on the 'retrieval.requested' topic" in wrong_topic.stderr
    unknown = run(env, "publish", "refunds", "-", stdin="{}")
    assert unknown.returncode == 2
    assert "unknown topic" in unknown.stderr


def test_schemas_export_check_passes_on_the_committed_folder() -> None:
    root = Path(__file__).parents[2]
    result = subprocess.run(
        [*CLI, "schemas", "export", "--check", "--out", str(root / "schemas")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_bench_events_writes_its_section(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nkept text\n")
    result = run(env, "bench", "events", "-n", "300", "--rate", "1000", "--rounds", "2", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    text = out.read_text()
    assert "kept text" in text
    assert "bare aiokafka (baseline)" in text and "loraswarm EventBus" in text
    assert "Rounds: 2, the baseline and the EventBus alternating" in text
    result = run(env, "bench", "events", "-n", "300", "--rate", "1000", "--rounds", "1", "--out", str(out))
    assert out.read_text().count("<!-- bench:events -->") == 1  # replaced, not appended
