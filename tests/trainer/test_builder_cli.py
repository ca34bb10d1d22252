"""`loraswarm adapters data`: the built set of a scope's ingested documents, without training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from loraswarm.cli import app
from loraswarm.shared.settings import Settings
from tests.trainer.builder_corpus import POLICIES, PROCESSES, STYLE
from tests.trainer.conftest import document


def test_adapters_data_prints_counts_a_sample_and_the_drops(
    trainer_settings: Settings, ingest: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(
        "larkspur",
        [
            document("policies.md", POLICIES),
            document("processes.md", PROCESSES),
            document("style-guide.md", STYLE),
            document("ana.md", "# Ana's notes\n\nMy team budget code is TAMSIN-512.\n", "user:ana"),
        ],
    )
    monkeypatch.setenv("LORASWARM_DATA_DIR", str(trainer_settings.data_dir))
    monkeypatch.setenv(
        "LORASWARM_ORCHESTRATION__TENANTS_DIR", str(trainer_settings.orchestration.tenants_dir)
    )
    monkeypatch.setenv("LORASWARM_RETRIEVAL__COLLECTION", trainer_settings.retrieval.collection)
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "built.jsonl"
    result = CliRunner().invoke(app, ["adapters", "data", "--tenant", "larkspur", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "generators: extractor" in result.output
    for kind in ("fact", "process", "style", "raft"):
        assert f"{kind} from " in result.output  # a sample of each kind, with its chunk
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {line["kind"] for line in lines} == {"fact", "process", "style", "raft"}
    assert not any("TAMSIN" in json.dumps(line) for line in lines)  # the company's set: no user text
    user = CliRunner().invoke(app, ["adapters", "data", "--tenant", "larkspur", "--user", "ana"])
    assert user.exit_code == 0, user.output
    assert "TAMSIN-512" in user.output and "Larkspur accepts" not in user.output
