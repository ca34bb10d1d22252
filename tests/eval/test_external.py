"""The external-data path: a corpus folder and a question file the repository has never seen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from loraswarm.cli import app

pytestmark = pytest.mark.weaviate

COMPANY = {
    "handbook.md": "# Harbour Print handbook\n\nHarbour Print delivers posters within 4 working days.\n"
    "The print shop manager is Edda Vornholt.\nRush orders cost 12 euros extra.\n",
    "jobs.md": "# Print jobs\n\nTo print a poster: check the proof, load the paper, run the press, trim the edges.\n"
    "Every customer e-mail starts with 'Moin from Harbour Print'.\n",
    "faq.md": "# FAQ\n\nPosters take 4 working days. Edda Vornholt manages the shop. Rush: 12 euros.\n",
}
USER = {
    "notes.md": "# Kai's notes\n\nMy locker number is 417. I take the late shift on Thursdays and the early "
    "shift on Mondays. My forklift licence runs until March. I keep the spare press keys in locker 417.\n",
    "more.md": "# Kai, short\n\nLocker 417. Late shift: Thursday. Early shift: Monday. Forklift licence: "
    "until March. The spare press keys are in my locker.\n",
    "routine.md": "# My opening routine\n\nFirst I unlock the side door, then I switch on the dryer, then I "
    "check the night's print queue, and last I put the kettle on for the team.\n",
}
QUESTIONS: list[dict[str, Any]] = [
    {"tenant": "harbour", "user": None, "kind": "fact", "question": "Who manages the print shop?", "answers": ["Edda Vornholt", "Vornholt"]},
    {"tenant": "harbour", "user": "kai", "kind": "fact", "question": "What is my locker number?", "answers": ["417"]},
    {"tenant": "harbour", "user": None, "kind": "process", "question": "How is a poster printed?", "steps": ["check the proof", "load the paper", "run the press", "trim the edges"]},
    {"tenant": "harbour", "user": None, "kind": "style", "question": "Write a customer e-mail about a late order.", "style_rules": ["starts_with: Moin from Harbour Print", "max_words: 80"]},
]  # fmt: skip


def test_eval_runs_on_a_folder_and_question_file_from_outside(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    for name, text in COMPANY.items():
        (corpus / "harbour" / "company").mkdir(parents=True, exist_ok=True)
        (corpus / "harbour" / "company" / name).write_text(text)
    for name, text in USER.items():
        (corpus / "harbour" / "users" / "kai").mkdir(parents=True, exist_ok=True)
        (corpus / "harbour" / "users" / "kai" / name).write_text(text)
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    out = tmp_path / "out"

    result = CliRunner().invoke(
        app,
        ["eval", "--quick", "--corpus", str(corpus), "--questions", str(questions),
         "--conditions", "base,rag,company_user", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)

    report = json.loads((out / "report.json").read_text())
    assert not (out / "data").exists()  # nothing generated: the given data was used
    assert list(report["conditions"]) == ["base", "rag", "company_user"]
    assert report["sizes"]["questions"] == 4
    assert {a["question"] for a in report["answers"]} == {f"harbour-{i}" for i in range(1, 5)}
    assert {a["adapter_id"] for a in report["adapters"]} == {"harbour/company", "harbour/user-kai"}
    assert all(a["published"] for a in report["adapters"]), report["adapters"]
    by = {(a["condition"], a["question"]): a for a in report["answers"]}
    assert by["rag", "harbour-2"]["retrieved"] > 0 and by["base", "harbour-2"]["retrieved"] == 0
    assert by["company_user", "harbour-2"]["adapter_id"] == "harbour/company+harbour/user-kai"
    assert (out / "report.md").is_file() and (out / "chart.png").is_file()


def test_a_broken_question_file_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "corpus" / "harbour" / "company").mkdir(parents=True)
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps(QUESTIONS[0]) + "\n" + json.dumps({**QUESTIONS[2], "steps": ["one"]}) + "\n"
    )
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--corpus",
            str(tmp_path / "corpus"),
            "--questions",
            str(questions),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 1
    assert "q.jsonl:2" in result.output and "at least two `steps`" in result.output
