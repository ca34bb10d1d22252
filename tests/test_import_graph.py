"""Static tools see the real import graph: pyright resolves every `loraswarm.*` import.

The tree it reads is generated from pyproject.toml's package-dir (loraswarm/import_tree.py), so
these tests build it first, as `make typecheck` does; no hand-made links.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loraswarm import import_tree

ROOT = Path(__file__).resolve().parents[1]
PYRIGHT = Path(sys.executable).parent / "pyright"

pytestmark = pytest.mark.skipif(not PYRIGHT.exists(), reason="pyright is a dev dependency: make install")


def loraswarm_imports() -> set[str]:
    """Every module named by an absolute `loraswarm.*` import in the tree."""
    found: set[str] = set()
    for top in ("loraswarm", "shared", "services", "tests"):
        for file in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text(), str(file))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module)
                elif isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
    return {name for name in found if name == "loraswarm" or name.startswith("loraswarm.")}


def pyright(*args: str, cwd: Path, venvs: Path) -> list[dict[str, object]]:
    # No third-party packages (an empty venv): only our own imports are resolved and analysed,
    # which keeps the run to about a minute.
    done = subprocess.run(
        [str(PYRIGHT), "--outputjson", "--venvpath", str(venvs), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.stdout.startswith("{"), done.stderr[-2000:] or done.stdout[-2000:]
    diagnostics: list[dict[str, object]] = json.loads(done.stdout)["generalDiagnostics"]
    return diagnostics


def unresolved_own(diagnostics: list[dict[str, object]]) -> list[str]:
    """Diagnostics about our own imports: a module not found, or a name it lacks."""
    return [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"  # type: ignore[index]
        for d in diagnostics
        if d.get("rule")
        in ("reportMissingImports", "reportAttributeAccessIssue", "reportMissingModuleSource")
        and ("loraswarm" in str(d["message"]) or "unknown import symbol" in str(d["message"]))
        and "site-packages" not in str(d["file"])
    ]


@pytest.fixture(scope="module")
def empty_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venvs = tmp_path_factory.mktemp("venvs")
    (
        venvs / ".venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    ).mkdir(parents=True)
    return venvs


def test_the_tree_is_the_package_as_imported(tmp_path: Path) -> None:
    tree = import_tree.build(ROOT, tmp_path / "tree")
    for module in sorted(loraswarm_imports()):
        parts = module.split(".")
        as_module = tree.joinpath(*parts).with_suffix(".py")
        as_package = tree.joinpath(*parts, "__init__.py")
        # `from loraswarm.x import name` may name a module or a name in one; its parent must exist.
        assert as_module.exists() or as_package.exists(), f"{module} is missing from the generated tree"


def test_pyright_resolves_every_loraswarm_import(empty_venv: Path) -> None:
    import_tree.build(ROOT)  # the tree pyproject.toml's [tool.pyright] stubPath names
    assert len(loraswarm_imports()) > 100  # the graph is real: this many modules are imported
    unresolved = unresolved_own(pyright(cwd=ROOT, venvs=empty_venv))
    assert not unresolved, "\n".join(unresolved[:20])


def test_without_the_tree_pyright_cannot_see_the_graph(tmp_path: Path, empty_venv: Path) -> None:
    """The check above can fail: the same project with no stub path misses shared/ and services/."""
    project = tmp_path / "project"
    project.mkdir()
    for top in ("loraswarm", "shared", "services"):
        shutil.copytree(ROOT / top, project / top, ignore=shutil.ignore_patterns("__pycache__"))
    config = {"include": ["loraswarm/cli/serve.py"], "typeCheckingMode": "off", "pythonVersion": "3.11"}
    (project / "pyrightconfig.json").write_text(json.dumps(config))
    unresolved = unresolved_own(pyright(cwd=project, venvs=empty_venv))
    assert any("loraswarm.shared" in line or "loraswarm.services" in line for line in unresolved), unresolved
