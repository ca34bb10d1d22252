"""deploy/docker/Dockerfile: parses, installs every service, and its commands and ENV are real.

No Docker engine runs here, so the image is not built; what the build does with Python is done
for real instead: the context that Dockerfile.dockerignore lets through, the files the COPY
instructions take from it, and a wheel built from exactly those files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from loraswarm.cli.serve import available
from tests.deploy.manifests import (
    ROOT,
    dockerfile,
    dockerfile_env,
    dockerignore_excludes,
    parse_command,
)


def _copied_sources() -> list[str]:
    sources = []
    for instruction in dockerfile():
        if instruction.cmd == "COPY" and not any(f.startswith("--from") for f in instruction.flags):
            sources += list(instruction.value[:-1])
    return sources


def test_the_dockerfile_parses_into_a_build_and_a_runtime_stage() -> None:
    instructions = dockerfile()
    stages = [i for i in instructions if i.cmd == "FROM"]
    assert len(stages) == 2
    assert any(i.cmd == "COPY" and "--from=build" in i.flags for i in instructions)
    user = [i for i in instructions if i.cmd == "USER"]
    assert user and user[-1].value[0] not in ("root", "0"), "services must not run as root"


def test_every_copied_path_is_in_the_context() -> None:
    for source in _copied_sources():
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not dockerignore_excludes(source), f"COPY {source}: Dockerfile.dockerignore leaves it out"
    assert dockerignore_excludes("tests/conftest.py")
    assert dockerignore_excludes("shared/__pycache__/bus.cpython-311.pyc")


def test_the_default_command_is_a_real_one() -> None:
    cmd = next(i for i in reversed(dockerfile()) if i.cmd == "CMD")
    assert cmd.json, "CMD in exec form, so signals reach loraswarm"
    path, params = parse_command(list(cmd.value))
    assert path == ["serve"] and params["service"] == "all" and params["broker"] == "kafka"


def test_the_image_sets_only_real_settings() -> None:
    from loraswarm.docs import setting_rows

    names = {row.env for row in setting_rows()}
    set_here = {k for k in dockerfile_env() if k.startswith("LORASWARM_")}
    assert set_here, "the image should set its data and model folders"
    assert set_here <= names, f"not settings: {sorted(set_here - names)}"


def _context_copy(destination: Path) -> None:
    """What `COPY` puts into /src: every copied path, minus what the dockerignore leaves out."""
    for source in _copied_sources():
        origin = ROOT / source
        files = [origin] if origin.is_file() else [p for p in origin.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if dockerignore_excludes(relative):
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)


def test_the_image_installs_every_service(tmp_path: Path) -> None:
    context = tmp_path / "src"
    _context_copy(context)
    wheels = tmp_path / "wheels"
    # `pip install .` of the Dockerfile, without the dependencies (they are the venv's already).
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = wheels.glob("loraswarm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for service in available():
        assert f"loraswarm/services/{service}/app.py" in names, (
            f"the image would lack services/{service}: list loraswarm.services.{service} in "
            "pyproject.toml's [tool.setuptools] packages"
        )
    # Every package of the source tree, under the name it is imported by.
    mapping = {"loraswarm": "loraswarm", "shared": "loraswarm/shared", "services": "loraswarm/services"}
    missing = [
        f"{mapping[top]}/{init.parent.relative_to(context / top).as_posix()}".rstrip("/.")
        for top in mapping
        for init in sorted((context / top).rglob("__init__.py"))
        if f"{mapping[top]}/{init.relative_to(context / top).as_posix()}" not in names
    ]
    assert not missing, (
        f"a plain `pip install .` (the image's) leaves out {missing}: list them in pyproject.toml's "
        "[tool.setuptools] packages"
    )
    # `loraswarm infra` builds Kafka and Jaeger from files beside its modules (pom.xml, go.mod, ...).
    infra_files = [
        f.relative_to(context).as_posix()
        for f in sorted((context / "loraswarm/infra").rglob("*"))
        if f.is_file() and "__pycache__" not in f.parts
    ]
    assert "loraswarm/infra/kafka/pom.xml" in infra_files
    left_out = [f for f in infra_files if f not in names]
    assert not left_out, f"the wheel leaves out {left_out}: add them to [tool.setuptools.package-data]"
    assert "would be ignored" not in built.stderr, built.stderr[-3000:]
    assert not any(n.startswith("tests/") for n in names)


def test_the_dependency_layer_installs_what_pyproject_names(tmp_path: Path) -> None:
    """The RUN that lists the dependencies, run by a shell as Docker runs it."""
    import tomllib

    run = next(i for i in dockerfile() if i.cmd == "RUN" and "requirements.txt" in i.value[0])
    listing = run.value[0].split("&&")[0].replace("/tmp/requirements.txt", str(tmp_path / "requirements.txt"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    done = subprocess.run(
        ["sh", "-c", listing],
        cwd=tmp_path,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert (tmp_path / "requirements.txt").read_text().splitlines() == expected
