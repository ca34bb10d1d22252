"""README's "Your company in five commands", run exactly as written, on the real local Kafka and Weaviate.

The commands are read from the README's block between the `five-commands` markers, and what the
README says they print (the `five-commands-output` block) is checked against what they print here,
line by line with numbers, paths and the answer's wording masked — so the test and the page cannot
drift. Only the environment differs: this test's own topic prefix, Weaviate collection, data
folders and ports.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from loraswarm.cli import preflight
from loraswarm.shared.settings import Settings
from tests.conftest import TOPIC_PREFIX
from tests.processes import free_ports, process

ROOT = Path(__file__).parents[2]
CLI = [sys.executable, "-m", "loraswarm.cli"]

pytestmark = [pytest.mark.kafka, pytest.mark.weaviate]


def five_commands() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- five-commands -->\s*```bash\n(.*?)```", readme, re.S)
    assert block, "README.md lacks the <!-- five-commands --> block"
    commands = []
    for line in block.group(1).splitlines():
        line = line.split("  #")[0].strip()  # a trailing comment explains the line
        if line:
            commands.append(shlex.split(line))
    return commands


def printed() -> dict[str, list[str]]:
    """README's "What they print": each command's (second word's) lines, `...` lines left out."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- five-commands-output -->\s*```text\n(.*?)```", readme, re.S)
    assert block, "README.md lacks the <!-- five-commands-output --> block"
    out: dict[str, list[str]] = {}
    current = ""
    for line in block.group(1).splitlines():
        if line.startswith("$ loraswarm "):
            current = shlex.split(line[2:])[1]
            out[current] = []
        elif current and line.strip() and line.strip() != "...":
            out[current].append(line)
    return out


def skeleton(text: str) -> str:
    """A line's shape: box drawing, paths and numbers masked, spaces collapsed."""
    text = re.sub(r"[\u2500-\u257f]", " ", text)
    text = re.sub(r"(?<![\w.])/[^\s:;,()]+", "<path>", text)
    text = re.sub(r"\d+(?:\.\d+)?", "#", text)
    return " ".join(text.split())


def checked_lines(command: str, lines: list[str]) -> list[str]:
    """The README lines that must appear as printed: for `ask`, all but the answer's wording."""
    if command != "ask":
        return lines
    kept, in_answer = [], False
    for line in lines:
        shape = skeleton(line)
        if re.match(r"#\. ", shape):
            in_answer = True
        if "cites:" in shape:  # what it cites is checked by the test itself (the returns document)
            in_answer = False
            continue
        if not in_answer:
            kept.append(line)
    return kept


def test_the_readme_shows_what_each_command_prints() -> None:
    shown = printed()
    assert list(shown) == ["tenants", "ingest", "adapters", "serve", "ask"]
    assert all(shown.values()), shown


def test_the_readme_has_five_loraswarm_commands() -> None:
    commands = five_commands()
    assert len(commands) == 5 and all(c[0] == "loraswarm" for c in commands)
    assert [c[1] for c in commands] == ["tenants", "ingest", "adapters", "serve", "ask"]


def test_your_company_in_five_commands(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loraswarm.infra import weaviate as local_weaviate

    local_weaviate.up(Settings().infra)
    model_port, gateway_port = free_ports(2)
    env = {
        **os.environ,
        "COLUMNS": "160",
        "LORASWARM_DATA_DIR": str(tmp_path / "data"),
        "LORASWARM_ORCHESTRATION__TENANTS_DIR": str(tmp_path / "tenants"),
        "LORASWARM_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "LORASWARM_KAFKA__TOPIC_PREFIX": f"{TOPIC_PREFIX}five{uuid.uuid4().hex[:8]}.",
        "LORASWARM_RETRIEVAL__COLLECTION": f"Five{uuid.uuid4().hex[:8]}",
        "LORASWARM_MODEL_SERVER__PORT": str(model_port),
        "LORASWARM_GATEWAY__PORT": str(gateway_port),
        "LORASWARM_ORCHESTRATION__TGI_URL": f"http://127.0.0.1:{model_port}",
        "LORASWARM_ORCHESTRATION__PRIMARY_LLM_BASE_URL": f"http://127.0.0.1:{model_port}/v1",
    }
    create, ingest, train, serve, ask = five_commands()

    def run(command: list[str], timeout: int = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *command[1:]],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    transcript: list[str] = []
    for command in (create, ingest, train):
        done = run(command, timeout=1800 if command is train else 900)  # train: 100 steps, the default
        transcript += [f"$ {shlex.join(command)}", done.stdout.rstrip()]
        assert done.returncode == 0, f"{shlex.join(command)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        if command is train:
            assert "published northwind/company@1" in done.stdout, done.stdout[-3000:]

    for key, value in env.items():  # the checks below read the environment the commands read
        if key.startswith("LORASWARM_"):
            monkeypatch.setenv(key, value)
    settings = Settings()
    with process([*CLI, *serve[1:]], env, signal.SIGINT, log=tmp_path / "serve.log") as services:
        # Ready when `ask`'s own checks pass: a planner consumes this prefix, the model server answers.
        deadline = time.monotonic() + 300
        while preflight.problems(settings, "northwind") and time.monotonic() < deadline:
            assert services.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        assert not preflight.problems(settings, "northwind"), (tmp_path / "serve.log").read_text()[-3000:]
        answered = run(ask, timeout=400)
    output = answered.stdout
    transcript += [f"$ {shlex.join(serve)}", (tmp_path / "serve.log").read_text().rstrip()]
    transcript += [f"$ {shlex.join(ask)}", output.rstrip()]
    print("\n".join(transcript))  # what README's "What they print" shows (pytest -s)
    assert answered.returncode == 0, output[-3000:] + answered.stderr[-2000:]
    cites = [line for line in output.splitlines() if "cites:" in line]
    assert any("returns" in line.lower() for line in cites), output  # returns.md holds the answer
    outputs = dict(zip(["tenants", "ingest", "adapters", "serve", "ask"], transcript[1::2], strict=True))
    for name, lines in printed().items():
        actual = skeleton(outputs[name])
        for line in checked_lines(name, lines):
            assert skeleton(line) in actual, (
                f"README says `{name}` prints {line!r}; it printed:\n{outputs[name]}"
            )
