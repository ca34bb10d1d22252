"""README.md: the newcomer's page, with its reference sections generated and kept fresh."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from loraswarm import docs
from loraswarm.bench.report import write_section
from loraswarm.cli.serve import available
from loraswarm.shared.settings import Settings

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"


def test_generated_sections_are_fresh() -> None:
    stale = docs.stale(README)
    assert not stale, (
        f"README.md's generated sections {stale} differ from the settings, schemas/, the CLI or "
        "BENCHMARKS.md: run `loraswarm docs` (or `.venv/bin/loraswarm docs`) and commit README.md"
    )


def test_the_newcomer_finds_the_two_commands_the_flow_and_production() -> None:
    text = README.read_text()
    fence = re.search(r"## Two commands on a fresh machine\n.*?```bash\n(?P<body>.*?)```", text, re.S)
    assert fence is not None
    commands = [line.split("#")[0].strip() for line in fence["body"].splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    mermaid = re.search(r"```mermaid\n(?P<body>.*?)```", text, re.S)
    assert mermaid is not None and mermaid["body"].startswith("flowchart")
    for service in available():
        name = {"model_server": "model server"}.get(service, service)
        assert name in mermaid["body"] or service in mermaid["body"], f"the diagram lacks {service}"
    for topic in ("recommendation.requested", "retrieval.requested", "specialist.task", "specialist.result"):
        assert topic in mermaid["body"]
    # Mermaid's inline labels (`-- text -->`, `-. text .->`) break on the dots of topic names;
    # labels go in `|"..."|` (rendered with mermaid-cli when this was written).
    for line in mermaid["body"].splitlines():
        assert not re.search(r"(--|-\.)\s+[^\s>|-]", line), f'use a |"label"| in: {line.strip()}'
    for part in ("docker compose up", "kubectl apply -k deploy/k8s", "loraswarm infra up", "run/logs"):
        assert part in text, part


def test_the_configuration_reference_names_every_setting() -> None:
    text = README.read_text()
    rows = docs.setting_rows()
    assert len(rows) > 20
    for row in rows:
        assert f"`{row.env}`" in text, row.env


def test_env_names_in_the_reference_are_the_ones_pydantic_settings_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """For every plain-text setting: set the documented variable, and the value arrives there."""
    for key in [k for k in os.environ if k.upper().startswith("LORASWARM_")]:
        monkeypatch.delenv(key)
    checked = 0
    for row in docs.setting_rows():
        if row.type != "str":
            continue
        for probe in ("probe-value", "ProbeValue"):  # the second for fields with a pattern
            monkeypatch.setenv(row.env, probe)
            try:
                node: object = Settings()
            except ValidationError as exc:
                refused = [".".join(map(str, e["loc"])) for e in exc.errors()]
                # Refused by the field itself: the variable did reach it; try a value it accepts.
                if refused != [row.path]:
                    raise
                continue
            for part in row.path.split("."):
                node = getattr(node, part)
            assert node == probe, f"{row.env} did not reach {row.path}"
            checked += 1
            break
        monkeypatch.delenv(row.env)
    assert checked >= 5


class _Inner(BaseModel):
    depth: int = Field(default=3, ge=1, description="How deep.")
    mode: Literal["a", "b"] = Field(default="a", description="Which | way.")


class _Group(BaseModel):
    inner: _Inner = Field(default_factory=_Inner)
    home: Path = Field(default_factory=lambda: Path.home() / "x", description="Under home.")


class _Probe(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORASWARM_", env_nested_delimiter="__")
    group: _Group = Field(default_factory=_Group)
    secret: str | None = Field(default=None, description="Nothing.")


def test_nested_groups_defaults_and_pipes_are_rendered() -> None:
    rows = {row.path: row for row in docs.setting_rows(_Probe)}
    assert rows["group.inner.depth"].env == "LORASWARM_GROUP__INNER__DEPTH"
    assert rows["group.inner.depth"].type == "int, ≥ 1"
    assert rows["group.inner.mode"].type == "`a` \\| `b`"
    assert rows["group.home"].default == "`~/x`"
    assert rows["secret"].default == "unset"
    assert docs._cell(rows["group.inner.mode"].description) == "Which \\| way."


def test_sections_are_replaced_between_markers_only() -> None:
    readme = "intro\n<!-- generated:cli -->\nold\n<!-- /generated:cli -->\noutro\n"
    assert docs.render(readme, {"cli": "new\n"}) == (
        "intro\n<!-- generated:cli -->\nnew\n<!-- /generated:cli -->\noutro\n"
    )
    with pytest.raises(docs.DocsError, match="generated:events"):
        docs.render(readme, {"events": "x\n"})


def test_every_event_schema_is_a_row() -> None:
    section = docs.events_reference(ROOT / "schemas")
    topics = [p.stem for p in (ROOT / "schemas").glob("*.json") if p.name != "asyncapi.json"]
    for topic in topics:
        assert re.search(rf"^\| `{re.escape(topic)}` \| ", section, re.M), topic
    assert "| `recommendation.requested` | `tenant_id` |" in section
    assert "`question`: string" in section


def test_the_cli_reference_lists_commands_with_their_options() -> None:
    section = docs.cli_reference()
    assert "| `loraswarm serve` |" in section
    assert "`--broker` (`memory` \\| `kafka`)" in section
    assert "| `loraswarm docs` |" in section
    assert "| `loraswarm infra up` |" in section


def test_benchmark_sections_are_copied_from_benchmarks_md(tmp_path: Path) -> None:
    bench = tmp_path / "BENCHMARKS.md"
    assert "No benchmark has run yet" in docs.benchmarks_reference(bench)
    write_section(bench, "events", "## Events\n\n| path | events/s |\n|---|---:|\n| loraswarm | 9,000 |")
    section = docs.benchmarks_reference(bench)
    assert "### Events" in section
    assert "| loraswarm | 9,000 |" in section


def test_the_docs_command_rewrites_then_checks(tmp_path: Path) -> None:
    (tmp_path / "schemas").symlink_to(ROOT / "schemas")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n"
        + "".join(f"<!-- generated:{name} -->\n<!-- /generated:{name} -->\n\n" for name in docs.SECTIONS)
    )
    cli = [sys.executable, "-m", "loraswarm.cli", "docs", "--readme", str(readme)]
    env = {**os.environ, "COLUMNS": "200"}
    stale = subprocess.run(
        [*cli, "--check"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert stale.returncode == 1 and "run `loraswarm docs`" in stale.stdout
    written = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert written.returncode == 0, written.stdout + written.stderr
    assert "LORASWARM_KAFKA__BOOTSTRAP_SERVERS" in readme.read_text()
    fresh = subprocess.run(
        [*cli, "--check"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert fresh.returncode == 0, fresh.stdout
