"""The recipe sweep on the real model: each recipe trains, answers every question, and its row is
what it measured (no figure of its own)."""

from __future__ import annotations

from pathlib import Path

from loraswarm.bench.recipe import Recipe, Results, Row, markdown, run
from loraswarm.shared.settings import Settings


def test_a_two_recipe_sweep_trains_each_and_scores_every_question_without_retrieval(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    recipes = [
        Recipe("one step", {"steps": 1, "batch_size": 2, "seq_len": 64}),
        Recipe("facts only, one step", {"steps": 1, "batch_size": 2, "seq_len": 64}, {"raw_text_share": 0.0}, ("fact",)),
    ]  # fmt: skip
    results = run(Settings(), recipes, out=out, log=lambda _: None)

    assert results.base is not None and [r.recipe for r in results.rows] == [
        "one step",
        "facts only, one step",
    ]
    for row in [results.base, *results.rows]:
        # Every question of the company got an answer and a score in [0, 1].
        assert {k: len(v) for k, v in row.scores.items()} == results.questions
        assert all(0.0 <= x <= 1.0 for v in row.scores.values() for x in v)
    full, facts = results.rows
    assert full.steps == facts.steps == 1 and full.seconds > 0
    assert set(full.examples) >= {"fact", "process", "style", "raft"} and set(facts.examples) == {"fact"}
    # Facts only and no raw text: fewer training sequences than the whole mix.
    assert facts.sequences < full.sequences
    # Random names and codes: the base model knows none of the company's facts.
    assert sum(results.base.scores["fact"]) == 0
    section = out.read_text()
    assert (
        "<!-- bench:recipe -->" in section
        and "| one step |" in section
        and "| facts only, one step |" in section
    )


def test_the_report_names_the_recipe_with_the_most_facts() -> None:
    def row(name: str, facts: list[float]) -> Row:
        return Row(
            name,
            {"fact": 3},
            10,
            5,
            12.0,
            (2.0, 1.0),
            {"fact": facts, "process": [0.5], "style": [1.0]},
            "A.",
        )

    r = Results("test machine", "northwind", 15, {"fact": 2, "process": 1, "style": 1})
    r.base = Row(
        "base model (no adapter)",
        {},
        0,
        0,
        0.0,
        (0.0, 0.0),
        {"fact": [0.0, 0.0], "process": [0.0], "style": [0.5]},
    )
    r.rows = [row("a", [0.0, 1.0]), row("b", [1.0, 1.0])]
    text = markdown(r)
    assert "Most facts in the weights: **b** (fact accuracy 1.00 on 2 questions" in text
    assert "| base model (no adapter) | – | 0 | 0 | 0 | – | 0.00 [0.00, 0.00] |" in text
