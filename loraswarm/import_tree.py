"""The package as it is imported, as a tree of links, for tools that read folders, not setuptools.

pyproject.toml maps `loraswarm.shared` to shared/ and `loraswarm.services` to services/
(`[tool.setuptools] package-dir`). Python follows that mapping through the editable install's
import hook; static tools (pyright, IDEs, mypy) only see folders named as imported. This builds
that view from the mapping itself — one link per mapped folder, so a new module appears in it
without a rebuild — and pyproject.toml points pyright (`extraPaths`) and mypy (`mypy_path`) at it.

    python -m loraswarm.import_tree [OUT]      # default: build/typecheck (what `make typecheck` runs)
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

DEFAULT_OUT = Path("build/typecheck")


def package_dirs(root: Path) -> dict[str, Path]:
    """pyproject.toml's package-dir: import name -> folder (absolute)."""
    with (root / "pyproject.toml").open("rb") as f:
        mapping: dict[str, str] = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: (root / folder).resolve() for name, folder in mapping.items()}


def build(root: Path, out: Path = DEFAULT_OUT) -> Path:
    """(Re)build `out` under `root`; returns its absolute path.

    A package whose folder already has its import name (loraswarm/ for `loraswarm`) has each
    entry linked, so that the mapped sub-packages can sit beside them; every other mapped package
    is one link to its folder.
    """
    root = root.resolve()
    tree = out if out.is_absolute() else root / out
    shutil.rmtree(tree, ignore_errors=True)
    mapping = package_dirs(root)
    mapped = set(mapping)
    for name in sorted(mapping, key=lambda n: n.count(".")):
        folder = mapping[name]
        target = tree.joinpath(*name.split("."))
        if any(other.startswith(name + ".") for other in mapped):
            target.mkdir(parents=True, exist_ok=True)
            for entry in sorted(folder.iterdir()):
                if entry.name == "__pycache__" or f"{name}.{entry.name}" in mapped:
                    continue
                (target / entry.name).symlink_to(entry)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(folder, target_is_directory=True)
    return tree


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    print(build(Path.cwd(), out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
