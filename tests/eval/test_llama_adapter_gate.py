"""The llama_adapter section names what the gate refused and the bound it used."""

from __future__ import annotations

from loraswarm.eval.llama_adapter import gate_line


def test_gate_line_names_refusals_and_the_bound() -> None:
    adapters = [
        {"adapter_id": "northwind/company", "published": True, "detail": "@1"},
        {"adapter_id": "northwind/user-ana", "published": False, "detail": "quality_regression"},
    ]
    line = gate_line({"adapters": adapters, "settings": {"max_quality_regression": 0.25}})
    assert line.startswith("- Gate: 1 of 2 adapters published; refused: northwind/user-ana (quality_regression)")
    assert "allowed: 25%" in line
    clean = gate_line({"adapters": adapters[:1], "settings": {"max_quality_regression": None}})
    assert clean == "- Gate: 1 of 1 adapters published."
