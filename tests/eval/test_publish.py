"""What an eval run writes into BENCHMARKS.md: the gate in the llama_adapter section, and only the sections it can fill."""

from __future__ import annotations

from pathlib import Path

from loraswarm.eval.llama_adapter import gate_line
from loraswarm.eval.publish import publish_section


def test_gate_line_names_refusals_and_the_bound() -> None:
    adapters = [
        {"adapter_id": "northwind/company", "published": True, "detail": "@1"},
        {"adapter_id": "northwind/user-ana", "published": False, "detail": "quality_regression"},
    ]
    line = gate_line({"adapters": adapters, "settings": {"max_quality_regression": 0.25}})
    assert line.startswith(
        "- Gate: 1 of 2 adapters published; refused: northwind/user-ana (quality_regression)"
    )
    assert "allowed: 25%" in line
    clean = gate_line({"adapters": adapters[:1], "settings": {"max_quality_regression": None}})
    assert clean == "- Gate: 1 of 1 adapters published."


def test_a_run_without_rag_and_adapter_rag_leaves_the_personalization_section(tmp_path: Path) -> None:
    benchmarks = tmp_path / "BENCHMARKS.md"
    before = "# Benchmarks\n\n<!-- bench:personalization -->\nthe full run\n<!-- /bench:personalization -->\n"
    benchmarks.write_text(before)
    report = {"conditions": {"company": "company adapter", "llama_company": "company LLaMA-Adapter"}}
    assert publish_section(report, tmp_path / "chart.png", benchmarks) is None
    assert benchmarks.read_text() == before


def test_a_medium_run_writes_its_own_section_beside_the_full_runs(tmp_path: Path) -> None:
    from loraswarm.eval.publish import section_name

    medium = {"sizes": {"size": "medium"}, "conditions": {"rag": "base + RAG"}}
    assert section_name(medium) == "personalization-medium"
    assert section_name({"sizes": {"size": "full"}}) == "personalization"
    assert section_name({"sizes": {}}) == "personalization"  # reports written before sizes were named
