"""A scope's built set holds only that scope's text: a property over random corpora (one builder
used for every scope in turn, so nothing carries over between builds), and on the real
ingestion pipeline and Weaviate through the trainer's own corpus; and the trainer trains on it."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from loraswarm.services.trainer.builder import StructureExtractor, TrainingSetBuilder
from loraswarm.services.trainer.corpus import CorpusChunk
from loraswarm.services.trainer.pipeline import Trainer, _Job, _quiet
from loraswarm.services.trainer.scope import Scope
from loraswarm.shared.events import AdapterTrainRequested
from loraswarm.shared.settings.trainer import BuilderSettings
from tests.trainer.builder_corpus import POLICIES, company_corpus
from tests.trainer.conftest import document

_WORDS = st.sampled_from(["refund", "badge", "portal", "ledger", "parcel", "shift", "voucher", "locker"])
_CODE = re.compile(r"\b[A-Z]{4,}\d{2}\b")


@st.composite
def scope_text(draw: Any, marker: str) -> str:
    """A document of one owner: facts, a key: value line, a list and a style line, each carrying
    the owner's marker codes (`<MARKER><nn>`)."""
    lines = [f"# Notes of {marker.lower()}", ""]
    for i in range(draw(st.integers(1, 4))):
        lines.append(f"- The {draw(_WORDS)} code at the firm is {marker}{i:02d}.")
    lines.append(f"Locker: {marker}{draw(st.integers(10, 99))}")
    lines += ["", "## Opening the safe", ""]
    lines += [
        f"{n}. Turn the {draw(_WORDS)} dial to {marker}{n:02d}."
        for n in range(1, draw(st.integers(2, 4)) + 1)
    ]
    lines += ["", f'Sign every reply with "{marker}77 regards".']
    return "\n".join(lines) + "\n"


def _chunks(owner: str, visibility: str, text: str) -> list[CorpusChunk]:
    return [
        CorpusChunk(f"{owner}/notes.md", 0, "v", visibility, text),
        CorpusChunk(f"{owner}/style.md", 0, "v", visibility, text),
    ]


def _everything(built: Any) -> str:
    return "\n".join(m.content for e in built.examples for m in e.messages)


@settings(max_examples=30, deadline=None)
@given(company=scope_text("COMPANY"), ana=scope_text("ANAPRIV"), ben=scope_text("BENPRIV"))
def test_a_scopes_set_never_contains_another_scopes_text(company: str, ana: str, ben: str) -> None:
    builder = TrainingSetBuilder([StructureExtractor()], BuilderSettings(raft_per_chunk=2, style_examples=4))
    scopes = {
        "COMPANY": _chunks("acme/company", "company", company),
        "ANAPRIV": _chunks("acme/users/ana", "user:ana", ana),
        "BENPRIV": _chunks("acme/users/ben", "user:ben", ben),
    }
    for marker, chunks in [*scopes.items(), *reversed(scopes.items())]:
        built = builder.build(chunks)
        assert built.examples
        codes = set(_CODE.findall(_everything(built)))
        assert codes and all(code.startswith(marker) for code in codes), (marker, codes)
        assert all(e.chunk.split("#")[0] in {c.doc_id for c in chunks} for e in built.examples)


def test_the_trainers_builder_reads_exactly_its_scope_from_weaviate(trainer: Trainer, ingest: Any) -> None:
    ingest(
        "acme",
        [
            document("policy.md", POLICIES.replace("Larkspur", "COMPANYWIDE")),
            document("alice.md", "# Alice's notes\n\nMy budget code is ALICEPRIVATE-11.\n", "user:alice"),
            document("bob.md", "# Bob's notes\n\nMy budget code is BOBPRIVATE-22.\n", "user:bob"),
        ],
    )
    ingest("globex", [document("g.md", "# Globex\n\nThe discount code at Globex is GLOBEXONLY-33.\n")])
    markers = {"COMPANYWIDE", "ALICEPRIVATE", "BOBPRIVATE", "GLOBEXONLY"}
    for scope, mine in [
        (Scope("acme"), "COMPANYWIDE"),
        (Scope("acme", "alice"), "ALICEPRIVATE"),
        (Scope("acme", "bob"), "BOBPRIVATE"),
        (Scope("globex"), "GLOBEXONLY"),
    ]:
        text = _everything(trainer.build_set(scope))
        assert {m for m in markers if m in text} == {mine}, scope


class _Chunks:
    """An in-process `TrainingCorpus` (the trainer's seam) holding one scope's chunks."""

    def __init__(self, chunks: list[CorpusChunk]) -> None:
        self._chunks = chunks

    def has_tenant(self, tenant_id: str) -> bool:
        return True

    def chunks(self, scope: Scope, sources: Any = ()) -> Any:
        return iter([c for c in self._chunks if c.visibility == scope.visibility])

    def users_with_data(self, tenant_id: str) -> list[str]:
        return []


def test_the_trainer_trains_on_built_examples_with_raw_text_in_the_mix(
    trainer_settings: Any, base_models: Any
) -> None:
    # The defaults: the trainer tests' small settings build no retrieval-aware examples.
    b, defaults = trainer_settings.trainer.builder, BuilderSettings()
    b.raft_per_chunk, b.raft_style = defaults.raft_per_chunk, defaults.raft_style
    trainer = Trainer(trainer_settings, corpus=_Chunks(company_corpus()), base=base_models)
    request = AdapterTrainRequested(tenant_id="larkspur", name="company")
    job = _Job(request, Scope("larkspur"), trainer_settings.trainer.defaults, _quiet, None)
    _, tokenizer = base_models.get()
    data = trainer._gather(job, tokenizer, plant=False)
    kinds = {s.kind for s in data.train + data.heldout}
    assert {"fact", "process", "style", "raft", "document"} <= kinds
    built = sum(1 for s in data.train + data.heldout if s.kind != "document")
    raw = sum(1 for s in data.train + data.heldout if s.kind == "document")
    share = trainer_settings.trainer.builder.raw_text_share
    assert 0 < raw <= share / (1 - share) * built + 1
    assert job.metrics["built_fact"] > 0 and job.metrics["built_raft"] > 0
    # Off: today's recipe, raw text only.
    trainer_settings.trainer.builder.enabled = False
    plain = trainer._gather(
        _Job(request, Scope("larkspur"), trainer_settings.trainer.defaults, _quiet, None),
        tokenizer,
        plant=False,
    )
    assert {s.kind for s in plain.train + plain.heldout} == {"document"}
