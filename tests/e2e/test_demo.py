"""`loraswarm demo`: its flow on the embedded default for one tenant, and its clear refusals."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from loraswarm.demo import check_examples, demo_settings, ingest, train, train_request_id
from loraswarm.infra import weaviate as local_weaviate
from loraswarm.shared.settings import Settings
from loraswarm.shared.vectorstore import shared_store

ROOT = Path(__file__).parents[2]
CLI = [sys.executable, "-m", "loraswarm.cli"]


def one_tenant_examples(tmp_path: Path) -> Path:
    examples = tmp_path / "examples"
    shutil.copytree(ROOT / "examples" / "acme", examples / "acme")
    (examples / "tenants").mkdir()
    shutil.copy(ROOT / "examples" / "tenants" / "acme.yaml", examples / "tenants" / "acme.yaml")
    questions = yaml.safe_load((ROOT / "examples" / "questions.yaml").read_text())
    (examples / "questions.yaml").write_text(yaml.safe_dump({"acme": questions["acme"][:2]}))
    return examples


def run(
    *args: str, env: dict[str, str] | None = None, timeout: int = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env={**os.environ, "COLUMNS": "160", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


def test_the_demo_flow_answers_a_company_and_a_user_question(tmp_path: Path) -> None:
    examples = one_tenant_examples(tmp_path)
    result = run("demo", "--examples", str(examples), "--data-dir", str(tmp_path / "state"), "--steps", "3")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "acme/company@1 published" in output or "acme/company@1" in output
    assert "acme (company)" in output and "acme / ana" in output
    assert "2/2 recommendations" in output, result.stdout[-4000:]
    assert "cites:" in output
    # each contribution row names the tenant's adapters (which specialists run is the planner's choice;
    # the user's adapter stacked on the company's is checked in test_swarm.py)
    assert re.search(r"(policy|customer)\s+acme/company", result.stdout), result.stdout[-3000:]
    assert "process " in output  # the trace waterfall names the Kafka hops


@pytest.mark.parametrize(
    ("env", "fix"),
    [
        ({"LORASWARM_MODEL_CACHE": "{tmp}/no-models"}, "run `loraswarm models pull` first"),
        ({"LORASWARM_INFRA__HOME": "{tmp}/no-infra"}, "`loraswarm infra up weaviate`"),
    ],
)
def test_bad_configuration_is_one_sentence_naming_the_fix(
    tmp_path: Path, env: dict[str, str], fix: str
) -> None:
    examples = one_tenant_examples(tmp_path)
    resolved = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    result = run(
        "demo", "--examples", str(examples), "--data-dir", str(tmp_path / "state"), env=resolved, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-2000:]
    assert fix in output
    assert "Traceback" not in output


def test_an_unreadable_examples_folder_is_one_sentence(tmp_path: Path) -> None:
    result = run("demo", "--examples", str(tmp_path / "nowhere"), timeout=120)
    assert result.returncode == 1
    assert "cannot read the examples folder" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_rerun_on_unchanged_examples_is_the_same_training_request(tmp_path: Path) -> None:
    examples = one_tenant_examples(tmp_path)
    first = train_request_id(examples, "acme", "company", 20)
    assert train_request_id(examples, "acme", "company", 20) == first  # reused by the next run
    assert train_request_id(examples, "acme", "company", 21) != first
    assert train_request_id(examples, "acme", "user-ana", 20) != first
    assert train_request_id(examples, "acme", "company", 20, "lora", 2e-3) != first  # another recipe
    # The trainer's split changed (a new data revision): verdicts from before are not reused.
    assert train_request_id(examples, "acme", "company", 20, revision=1) != first
    with (examples / "acme" / "company" / "refunds.md").open("a") as f:
        f.write("Gift cards are never refunded.\n")
    assert train_request_id(examples, "acme", "company", 20) != first  # new data: trained again


def test_a_refused_adapter_is_not_trained_again_on_unchanged_examples(tmp_path: Path) -> None:
    """A refusal is a verdict on the same request: the next run reports it instead of retraining."""
    examples = one_tenant_examples(tmp_path)
    settings = demo_settings(examples.resolve(), tmp_path / "state")
    # The demo's own steps on the local Weaviate server, in a collection of this test's own.
    settings.retrieval.weaviate.mode = "server"
    settings.retrieval.collection = f"Demo{uuid.uuid4().hex[:12]}"
    local_weaviate.up(settings.infra)
    console = Console(file=io.StringIO())
    try:
        assert ingest(settings, examples, console) > 0
        refused_twice(settings, examples, console)
    finally:
        shared_store(settings).client.collections.delete(settings.retrieval.collection)


def test_a_second_checkout_replaces_the_examples_instead_of_adding_them_again(tmp_path: Path) -> None:
    """A document's id is its path: a second checkout's ingest must not leave the first's beside it
    (every passage then came twice, and was cited twice)."""
    first = one_tenant_examples(tmp_path / "one")
    second = one_tenant_examples(tmp_path / "two")
    settings = demo_settings(first.resolve(), tmp_path / "state")
    settings.retrieval.weaviate.mode = "server"
    settings.retrieval.collection = f"Demo{uuid.uuid4().hex[:12]}"
    local_weaviate.up(settings.infra)
    console = Console(file=io.StringIO())
    store = shared_store(settings)
    try:
        chunks = ingest(settings, first, console)
        assert store.count("acme") == chunks > 0
        assert ingest(settings, second, console) == chunks
        assert store.count("acme") == chunks
        ids = [c.doc_id for c in store.chunks("acme")]
        assert ids and all(f"{tmp_path}/two/" in i for i in ids), ids
    finally:
        store.client.collections.delete(settings.retrieval.collection)


def refused_twice(settings: Settings, examples: Path, console: Console) -> None:
    # A learning rate of 1e37 wrecks every adapter: its loss becomes NaN or its held-out loss
    # soars, verdicts on the adapter that the same request would come to again.
    wreck = {"lora": 1e37, "llama_adapter": 1e37}
    questions = check_examples(examples)
    first = train(settings, examples, questions, 4, console, learning_rates=wreck)
    assert first and all(re.search(r" rejected \((nan_loss|quality_regression)\): ", x) for x in first), first
    again = train(settings, examples, questions, 4, console, learning_rates=wreck)
    assert again == [f"{line} (refused before, same data and steps)" for line in first]
    # `--retrain` trains them anyway: a fresh verdict, not the kept one.
    retrained = train(settings, examples, questions, 4, console, retrain=True, learning_rates=wreck)
    assert len(retrained) == len(first) and not any("refused before" in line for line in retrained)
    assert all(re.search(r" rejected \((nan_loss|quality_regression)\): ", x) for x in retrained)
