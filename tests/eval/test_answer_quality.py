"""The report's answer checks per condition, on answers written by hand (no model, no services)."""

from __future__ import annotations

from pathlib import Path

from loraswarm.eval.conditions import Answer
from loraswarm.eval.questions import EvalQuestion
from loraswarm.eval.report import build, markdown
from loraswarm.eval.runner import EvalConfig, EvalRun

SHIP = "Standard shipping at Northwind Freight costs 13 euros."
LEADS = "Oskar Pelyaspa leads the research team at Northwind Freight."
QUESTIONS = [
    EvalQuestion(
        id="f1",
        tenant="northwind",
        kind="fact",
        question="How much does standard shipping cost?",
        answers=["13 euros"],
    ),
    EvalQuestion(
        id="f2",
        tenant="northwind",
        kind="fact",
        question="How much does shipping cost, and who leads the research team?",
        answers=["13 euros"],
        all_of=[["13 euros"], ["Oskar Pelyaspa"]],
    ),
]


def run(answers: list[Answer]) -> EvalRun:
    config = EvalConfig(corpus=Path("c"), questions=Path("q"), out=Path("o"), conditions=["rag", "swarm"])
    return EvalRun(config, QUESTIONS, answers, [], 2, {"total": 1.0})


def test_echo_repetition_parts_and_citations_are_reported_per_condition() -> None:
    answers = [
        Answer("f1", "rag", text="How much does standard shipping cost?", passages=[SHIP, LEADS]),
        Answer("f2", "rag", text="It costs 13 euros. It costs 13 euros.", passages=[SHIP, LEADS]),
        Answer("f1", "swarm", text="Standard shipping costs 13 euros.", passages=[SHIP, LEADS], cited=[SHIP]),
        Answer(
            "f2",
            "swarm",
            text="Shipping costs 13 euros.\nOskar Pelyaspa leads the research team.",
            passages=[SHIP, LEADS],
            cited=[SHIP, LEADS],
        ),
    ]
    report = build(run(answers))
    rag, swarm = report["answer_quality"]["rag"], report["answer_quality"]["swarm"]
    assert (rag["echo_rate"], rag["repeat_rate"], rag["multi_part_covered"]) == (0.5, 0.5, 0)
    assert rag["citation_precision"] is None and rag["uncited"] == 2
    assert (swarm["echo_rate"], swarm["repeat_rate"], swarm["multi_part_covered"]) == (0.0, 0.0, 1)
    assert swarm["citation_precision"] == 1.0 and swarm["citation_recall"] == 1.0
    assert rag["in_passages"] == 1.0 and rag["fact_accuracy_when_in_passages"] == 0.0  # f2 needs both parts
    assert "| base + RAG | 0.50 | 0.50 | 0 / 1 |" in markdown(report, chart=None)
