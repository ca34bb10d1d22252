"""Where loraswarm keeps its files by default."""

from __future__ import annotations

from pathlib import Path


def default_home() -> Path:
    return Path.home() / ".cache" / "loraswarm"
