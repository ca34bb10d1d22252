"""Writing one benchmark's section into BENCHMARKS.md, replacing its previous run."""

from __future__ import annotations

import re
from pathlib import Path

_HEADER = "# Benchmarks\n\nEach section is replaced by the newest run of its `loraswarm bench` command.\n"


def write_section(path: Path, name: str, body: str) -> None:
    text = path.read_text() if path.exists() else _HEADER
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    path.write_text(text)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
