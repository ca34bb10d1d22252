"""The generator: the same seed gives the same files; the questions are answerable from them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from loraswarm.eval.corpus import generate
from loraswarm.eval.questions import read_questions
from loraswarm.eval.scoring import contains


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(seed=seed, tenants=2, users_per_tenant=1, per_kind=5).write(
            tmp_path / name / "corpus", tmp_path / name / "questions.jsonl"
        )
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_sizes_and_every_gold_answer_is_in_the_corpus(tmp_path: Path) -> None:
    data = generate(seed=0, tenants=3, users_per_tenant=1, per_kind=10)
    data.write(tmp_path / "corpus", tmp_path / "q.jsonl")
    questions = read_questions(tmp_path / "q.jsonl")
    assert questions == data.questions  # the file round-trips
    for tenant in ("northwind", "bluepeak", "larkspur"):
        for kind in ("fact", "process", "style"):
            assert sum(q.tenant == tenant and q.kind == kind for q in questions) == 10
    assert any(q.two_source and q.kind == "fact" for q in questions)
    for q in questions:
        company = " ".join(p.read_text() for p in (tmp_path / "corpus" / q.tenant / "company").rglob("*.md"))
        private = ""
        if q.user:
            private = " ".join(
                p.read_text() for p in (tmp_path / "corpus" / q.tenant / "users" / q.user).rglob("*.md")
            )
        visible = company + " " + private
        if q.kind == "fact":
            assert any(contains(visible, a) for a in q.answers), q
            if q.two_source:  # the user's notes name the team, the company's data its lead
                assert not any(contains(private, a) for a in q.answers)
        if q.kind == "process":
            assert all(contains(visible, s) for s in q.steps), q


def test_a_document_is_named_the_same_wherever_the_run_writes_its_corpus(tmp_path: Path) -> None:
    # The trainer's held-out split and retrieval-aware examples hash the documents' names: a name
    # with the run's folder in it gave two runs of one seed different adapters.
    from loraswarm.eval.runner import same_id_anywhere
    from loraswarm.services.ingestion.files import FileOptions, discover, load_file
    from loraswarm.shared.events import Document

    named = []
    for run in ("eval-a", "eval-b"):
        corpus = tmp_path / run / "corpus"
        generate(seed=0, tenants=1, users_per_tenant=1, per_kind=2).write(corpus, tmp_path / run / "q.jsonl")
        docs = [load_file(p, FileOptions(source="company", visibility="company")) for p in discover([corpus])]
        named.append(
            sorted((same_id_anywhere(d, corpus).doc_id, d.content) for d in docs if isinstance(d, Document))
        )
    assert named[0] == named[1] and named[0]
    assert all(not doc_id.startswith("/") and "eval-" not in doc_id for doc_id, _ in named[0])
