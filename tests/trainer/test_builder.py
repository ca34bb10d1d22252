"""The training-set builder on its own: grounded examples of every kind from a small corpus,
ungrounded answers dropped, every format ingestion accepts, the specialists' exact prompt."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from transformers import AutoTokenizer

from loraswarm.services.specialist.agent import build_prompt
from loraswarm.services.trainer.builder import (
    KINDS,
    BuiltExample,
    Candidate,
    GeneratorOutput,
    StructureExtractor,
    TrainingSetBuilder,
    chunk_key,
)
from loraswarm.services.trainer.builder.raft import NOT_FOUND_ANSWER, nearest
from loraswarm.services.trainer.corpus import CorpusChunk
from loraswarm.shared import models
from loraswarm.shared.answer_checks import supported_by, ungrounded_claims
from loraswarm.shared.events import Document, Passage
from loraswarm.shared.prompts import specialist_prompt
from loraswarm.shared.settings import Settings
from loraswarm.shared.settings.trainer import BuilderSettings
from tests.ingestion.samples import pdf_with_text
from tests.specialist.test_handoff import POLICY, task
from tests.trainer.builder_corpus import POLICIES, chunks_of, company_corpus, doc


def extractor_set(chunks: list[CorpusChunk], **options: Any) -> Any:
    return TrainingSetBuilder(
        [StructureExtractor()], BuilderSettings(**options), ["Answer from the documents."]
    ).build(chunks)


def test_a_small_corpus_yields_grounded_examples_of_each_kind() -> None:
    chunks = company_corpus()
    texts = {chunk_key(c): c.text for c in chunks}
    built = extractor_set(chunks, raft_per_chunk=3)
    kept = built.kept()
    assert all(kept[k] >= 1 for k in KINDS), kept
    for example in built.examples:
        assert example.chunk in texts  # each example names a chunk of the scope it was given
        if example.kind in ("fact", "process"):
            assert ungrounded_claims(example.answer, [texts[example.chunk]], example.question) == []
    facts = [e for e in built.examples if e.kind == "fact"]
    # Several phrasings, and the other direction (from the value to what it is).
    refunds = [e for e in facts if "45 days" in e.answer]
    assert len({e.question for e in refunds}) >= 3
    assert any("45 days" in e.question for e in refunds)
    assert any(e.question == "Who leads the finance team at Larkspur?" for e in facts)
    process = next(e for e in built.examples if e.kind == "process")
    steps = ["Ask the manager", "Compare three fares", "Book through the portal", "Upload the receipts"]
    positions = [process.answer.find(s) for s in steps]
    assert -1 not in positions and positions == sorted(positions)  # the document's order
    style = [e for e in built.examples if e.kind == "style"]
    for e in style:
        lines = e.answer.split("\n")
        assert lines[0] == "Good day from Larkspur" and lines[-1] == "The Larkspur Wen team"
        assert "basically" not in e.answer and len(e.answer.split()) < 60
        assert e.also and e.also[0].startswith("larkspur/style-guide.md#")
        if len(e.messages) == 2:  # closed-book; with passages, the distractors follow the rules
            assert all(a.startswith("larkspur/style-guide.md#") for a in e.also)


def test_style_replies_are_also_asked_with_passages_in_a_plain_chat() -> None:
    chunks = company_corpus()
    texts = {chunk_key(c): c.text for c in chunks}
    built = extractor_set(chunks, raft_per_chunk=0, style_examples=6, raft_style=2)
    style = [e for e in built.examples if e.kind == "style"]
    closed_book = {e.answer for e in style if len(e.messages) == 2}
    with_passages = [e for e in style if len(e.messages) == 3]
    assert len(with_passages) == 2 and len(closed_book) >= 4
    for e in with_passages:
        system, user, reply = e.messages
        assert system.content == "Answer from the documents."  # the scope's instructions, no JSON
        assert user.content.startswith("Documents:\n[1] ") and texts[e.chunk] in user.content
        assert user.content.rstrip().endswith(e.question.split("Question: ")[-1])
        assert reply.content in closed_book  # the same styled reply as without passages
        assert reply.content.split("\n")[0] == "Good day from Larkspur"
        distractors = [k for k in e.also if not k.startswith("larkspur/style-guide.md#")]
        assert distractors and all(texts[k] in user.content for k in distractors)
    none = extractor_set(chunks, raft_per_chunk=0, style_examples=6, raft_style=0)
    assert all(len(e.messages) == 2 for e in none.examples if e.kind == "style")


def _raft_answer(example: Any) -> str:
    """The answer of a retrieval-aware example in either shape: the specialists' JSON or text."""
    system, _, assistant = example.messages
    if system.content.endswith("Answer in JSON with `answer` and `handoff`."):
        answer = json.loads(assistant.content)
        assert answer["handoff"] is None
        return str(answer["answer"])
    assert not assistant.content.startswith("{")
    return str(assistant.content)


def _question(example: BuiltExample) -> str:
    return example.messages[1].content.rsplit("Question: ", 1)[1]


def test_retrieval_aware_examples_hold_gold_among_same_scope_distractors_and_some_without_it() -> None:
    chunks = company_corpus()
    texts = {chunk_key(c): c.text for c in chunks}
    raft = [
        e
        for e in extractor_set(chunks, raft_per_chunk=20, raft_no_gold_share=0.2).examples
        if e.kind == "raft"
    ]
    assert len(raft) >= 8
    without = 0
    for e in raft:
        _, user, _ = e.messages
        answer = _raft_answer(e)
        assert all(a in texts and a != e.chunk for a in e.also)  # distractors: the scope's own chunks
        if texts[e.chunk] in user.content:
            assert answer != NOT_FOUND_ANSWER
            assert ungrounded_claims(answer, [texts[e.chunk]]) == []
        else:
            without += 1
            assert answer == NOT_FOUND_ANSWER
    assert 0 < without < len(raft) / 2
    # A question asked without its gold passage is asked with it too: asked only without it, a
    # user's one checklist was never trained with its passage.
    asked = {(_question(e), _raft_answer(e) == NOT_FOUND_ANSWER) for e in raft}
    assert all((question, False) in asked for question, lacking in asked if lacking)


_PROCESS_LINES = """Booking travel: Reserve the hotel, Upload the receipts, Book through the portal, Ask the manager
Returning a damaged order: Email the refund form, Pack the original box, Print the return label
Launching a campaign: Design the banner, Pick the audience, Draft the brief, Test the landing page
Onboarding a new hire: Book the safety training, Order the laptop, Sign the contract
Closing the month: Accrue open invoices, Export the trial balance, Run the payroll check
Ordering supplies: Fill the order form, File the invoice, Inspect the delivery, Check the stock
Escalating a complaint: Confirm by letter, Call the team lead, Log the complaint
Offboarding an employee: Transfer the files, Revoke the badge, Collect the laptop
Scheduling maintenance: Check the service log, Warn the users, Pick a quiet slot"""
PROCESS_BOOK = "# Larkspur processes\n\n" + "\n".join(
    f"## {name}\n\n" + "\n".join(f"{i}. {step}." for i, step in enumerate(steps.split(", "), 1)) + "\n"
    for name, steps in (line.split(": ") for line in _PROCESS_LINES.splitlines())
)


def test_retrieval_aware_distractors_are_what_a_retriever_puts_beside_the_gold_passage() -> None:
    # A process among its sibling processes, as retrieval returns it: with distractors from other
    # documents only, the one numbered list was the answer, and adapters trained so answered with
    # another process's steps when its siblings were in the prompt (BENCHMARKS.md).
    processes = chunks_of(doc("larkspur/handbook.md", PROCESS_BOOK))
    assert len(processes) >= 3
    chunks = [*company_corpus(), *processes]
    gold, *siblings = processes
    others = [c for c in chunks if c is not gold]
    assert {chunk_key(c) for c in nearest(gold, others, len(siblings))} == {chunk_key(c) for c in siblings}
    built = extractor_set(chunks, raft_per_chunk=4, raft_no_gold_share=0.0, raft_distractors=2)
    texts = {chunk_key(c): c.text for c in chunks}
    steps = [e for e in built.examples if e.kind == "raft" and e.chunk.startswith("larkspur/handbook.md#")]
    assert len(steps) >= 6
    among_siblings = [e for e in steps if any(a.startswith("larkspur/handbook.md#") for a in e.also)]
    assert len(among_siblings) >= len(steps) / 2
    for e in steps:  # no distractor states the answer
        answer = _raft_answer(e)
        assert all(not supported_by(answer, [texts[a]], e.question) for a in e.also)


def test_retrieval_aware_examples_span_the_kinds_and_both_prompt_shapes() -> None:
    chunks = company_corpus()
    # By turns, as for a company's many (a scope of a few gets both shapes: the user set's test).
    built = extractor_set(chunks, raft_per_chunk=2, raft_no_gold_share=0.0, raft_both_shapes_upto=0)
    raft = [e for e in built.examples if e.kind == "raft"]
    processes = {e.answer for e in built.examples if e.kind == "process"}
    answers = [_raft_answer(e) for e in raft]
    # A chunk's processes come before its facts: steps among passages are trained on too.
    assert any(a in processes for a in answers) and any(a not in processes for a in answers)
    assert len(answers) == len(set(answers))  # each answer once
    per_chunk: dict[str, int] = {}
    for e in raft:
        per_chunk[e.chunk] = per_chunk.get(e.chunk, 0) + 1
    assert max(per_chunk.values()) <= 2
    shapes = [e.messages[0].content.endswith("`handoff`.") for e in raft]
    assert shapes.count(True) >= 1 and shapes.count(False) >= 1
    for e in raft:
        if not e.messages[0].content.endswith("`handoff`."):
            assert e.messages[0].content == "Answer from the documents."  # the scope's instructions
            assert e.messages[1].content.startswith("Documents:\n[1] ")
    chat_only = extractor_set(chunks, raft_per_chunk=2, raft_shapes=("chat",))
    raft = [e for e in chat_only.examples if e.kind == "raft"]
    assert raft and all(e.messages[0].content == "Answer from the documents." for e in raft)


def test_retrieval_aware_examples_are_rendered_as_the_specialist_prompts() -> None:
    tokenizer = AutoTokenizer.from_pretrained(models.resolve(Settings()))
    chunks = company_corpus()
    texts = {chunk_key(c): c.text for c in chunks}
    example = next(
        e
        for e in extractor_set(chunks, raft_per_chunk=1).examples
        if e.kind == "raft" and e.messages[0].content.endswith("`handoff`.")
    )
    system, user, _ = (m.model_dump() for m in example.messages)
    rendered = tokenizer.apply_chat_template([system, user], tokenize=False, add_generation_prompt=True)
    question = user["content"].rsplit("\n\nQuestion: ", 1)[1]
    given = [texts[k] for k in (example.chunk, *example.also) if texts[k] in user["content"]]
    passages = sorted(given, key=user["content"].find)
    instructions = system["content"].split("\nAnswer in JSON")[0]
    assert rendered == specialist_prompt(instructions, question, passages)
    # The specialist renders through the same function.
    passage = Passage.model_validate(
        {
            "text": "Larkspur is in Trieste.",
            "score": 1.0,
            "citation": {"doc_id": "d", "position": 0, "source": "s"},
        }
    )
    assert POLICY is not None
    spec_prompt = build_prompt(POLICY, task([]), [passage], [], tokenizer_chat=True)
    assert spec_prompt == specialist_prompt(POLICY.instructions, task([]).question, [passage.text])


class ScriptedGenerator:
    """An in-process generator (the `Generator` interface) that writes what a test says."""

    name = "scripted"

    def __init__(self, pairs: list[tuple[str, str]], failures: dict[str, int] | None = None) -> None:
        self.pairs = pairs
        self.failures = failures or {}

    def generate(self, chunk: CorpusChunk) -> GeneratorOutput:
        out = GeneratorOutput([Candidate("fact", q, a, chunk, self.name) for q, a in self.pairs])
        out.failures.update(self.failures)
        return out


def test_an_ungrounded_generated_answer_is_dropped_and_counted_by_reason() -> None:
    chunks = chunks_of(doc("larkspur/policies.md", POLICIES))
    generator = ScriptedGenerator(
        [
            ("How much is shipping?", "Standard shipping at Larkspur costs 17 euros."),
            ("How much is express shipping?", "Express shipping at Larkspur costs 29 euros."),
            ("Who leads finance?", "Mara Quill leads the finance team."),
            ("What is the discount code at Larkspur?", "The discount code at Larkspur."),
        ],
        {"timeout": 1},
    )
    built = TrainingSetBuilder([generator], BuilderSettings(style_examples=0, raft_per_chunk=0)).build(chunks)
    assert [e.answer for e in built.examples] == ["Standard shipping at Larkspur costs 17 euros."]
    assert built.dropped() == {("fact", "ungrounded"): 2, ("fact", "adds nothing to the question"): 1}
    assert built.failures == {"scripted: timeout": 1}
    assert built.metrics()["dropped_fact"] == 3 and built.metrics()["built_fact"] == 1


FORMATS = {
    "md": doc("f.md", "# Fees\n\nThe cleaning fee at Larkspur is 17 euros.\n"),
    "txt": doc("f.txt", "The cleaning fee at Larkspur is 17 euros.\n", media_type="text/plain"),
    "html": doc(
        "f.html",
        "<html><head><title>Fees</title></head><body><h1>Fees</h1><p>The cleaning fee at Larkspur is 17 euros."
        "</p></body></html>",
        media_type="text/html",
    ),
    "pdf": Document(
        doc_id="f.pdf",
        source="handbook",
        media_type="application/pdf",
        content_encoding="base64",
        content=base64.b64encode(pdf_with_text("Fees", "The cleaning fee at Larkspur is 17 euros.")).decode(),
    ),
    "csv": doc("f.csv", "id,text\n1,The cleaning fee at Larkspur is 17 euros.\n", media_type="text/csv"),
    "json": doc(
        "f.json",
        json.dumps([{"id": "a", "text": "The cleaning fee at Larkspur is 17 euros."}]),
        media_type="application/json",
    ),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_the_extractor_handles_every_format_ingestion_accepts(fmt: str) -> None:
    chunks = chunks_of(FORMATS[fmt])
    assert chunks, f"ingestion made no chunk of the {fmt} document"
    built = extractor_set(chunks)
    facts = [e for e in built.examples if e.kind == "fact"]
    assert any("17 euros" in e.answer and "17" not in e.question for e in facts), [e.question for e in facts]
    assert any(e.question.startswith("What is the cleaning fee at Larkspur") for e in facts)


def test_a_user_set_speaks_to_the_user_and_keeps_their_own_style() -> None:
    notes = chunks_of(
        doc(
            "larkspur/users/ana/notes.md",
            "# Ana's notes\n\nMy team budget code is TAMSIN-512.\nI work in the logistics team.\n\n## Checklist\n\n1. Clear the inbox.\n"
            "2. Plan tomorrow.\n",
            visibility="user:ana",
        )
    ) + chunks_of(
        doc(
            "larkspur/users/ana/writing.md",
            '# How I write\n\nI write my replies as bullet points.\nI sign every reply with "Cheers, Ana".\n',
            visibility="user:ana",
        )
    )
    built = extractor_set(notes)
    facts = {e.question: e.answer for e in built.examples if e.kind == "fact"}
    assert facts["What is my team budget code?"] == "Your team budget code is TAMSIN-512."
    # A note with no name, number or code in it is still a fact the user asks about.
    assert facts["Which team do I work in?"] == "You work in the logistics team."
    # A few retrieval-aware questions: each in both prompt shapes, and exactly the share without gold.
    raft = [e for e in built.examples if e.kind == "raft"]
    questions = [e.messages[1].content for e in raft]
    assert raft and all(questions.count(q) == 2 for q in questions)
    specialist = [e for e in raft if e.messages[0].content.endswith("`handoff`.")]
    assert len(specialist) == len(raft) / 2
    lacking = sum(_raft_answer(e) == NOT_FOUND_ANSWER for e in specialist)
    assert lacking == int(0.2 * (len(specialist) - lacking) + 0.5) > 0
    assert len({_question(e) for e in specialist}) == len(specialist) - lacking  # each also with gold
    style = [e for e in built.examples if e.kind == "style"]
    assert style and all(e.answer.startswith("- ") and e.answer.endswith("Cheers, Ana") for e in style)
