"""Retrieval-aware examples (RAFT, Zhang et al. 2024): the question with passages, the gold chunk
among distractors of the same scope → an answer that uses the gold passage; `no_gold_share` of
the scope's questions (`without_gold`) also asked without the gold chunk → "not in the documents".

Two shapes, alternating, with the same user turn (`specialist_messages`: "Documents: [1] …
Question: …"):

    specialist   exactly the prompt the specialists send (shared/prompts.py) → their JSON answer
    chat         the scope's instructions as a plain system prompt → the answer as text: what a
                 tenant's own retrieval sends through the chat API, and the eval's "+ RAG" arms

Why both: trained on the JSON shape alone, an adapter given passages in a plain chat answered
worse than the base model given the same passages (BENCHMARKS.md, personalization: company + user
adapter + RAG 0.40 process recall against RAG's 0.61), while it answered better than RAG with no
passages at all (0.90): what it knew from the passages' format was tied to the JSON answer.

The answer cites the gold passage the way specialists cite: by stating what it says
(`shared/answer_checks.supported_by` turns that into the citation). A "[2]" in the answer would
read as a number the passage lacks, and cost the very citation it means.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from typing import Literal

from loraswarm.services.trainer.builder.model import BuiltExample, Candidate, chunk_key
from loraswarm.services.trainer.corpus import CorpusChunk
from loraswarm.services.trainer.examples import Message
from loraswarm.shared.answer_checks import NOT_IN_DOCUMENTS, supported_by, terms
from loraswarm.shared.prompts import specialist_answer, specialist_messages

DEFAULT_INSTRUCTIONS = "You answer questions about the company from its documents."
NOT_FOUND_ANSWER = f"That is {NOT_IN_DOCUMENTS}."


def _rng(*parts: str) -> random.Random:
    return random.Random(hashlib.sha256("\x1f".join(parts).encode()).hexdigest())


RaftShape = Literal["specialist", "chat"]


def nearest(gold: CorpusChunk, chunks: Sequence[CorpusChunk], n: int) -> list[CorpusChunk]:
    """The `n` chunks a retriever is likeliest to put beside the gold one: the other sections of
    its document (the same heading and layout), then the chunks sharing most of its content words.

    Distractors drawn at random from other documents were easy to tell apart (the one list of
    steps among lists of facts). Retrieval returns the gold section's siblings, and with those
    the adapters answered 4-8 of 10 process questions with another process's steps, though the
    gold passage was in the prompt (BENCHMARKS.md, personalization-medium)."""
    mine = terms(gold.text)

    def likeness(c: CorpusChunk) -> float:
        theirs = terms(c.text)
        return len(mine & theirs) / max(1, len(mine | theirs))

    return sorted(chunks, key=lambda c: (c.doc_id != gold.doc_id, -likeness(c), chunk_key(c)))[:n]


def without_gold(candidates: Sequence[Candidate], share: float, seed: int = 0) -> set[int]:
    """The indexes of the `share` of the candidates (rounded) also asked without their gold passage,
    picked by a hash of each question. A draw per question left it to chance: a user's 5 drew 2,
    its only process among them, where 20% is 1. (A question with no distractor to show keeps
    its gold passage: a prompt of no passages teaches nothing about passages.)"""
    count = math.floor(share * len(candidates) + 0.5)
    ranked = sorted(
        range(len(candidates)),
        key=lambda i: _rng(str(seed), candidates[i].question, chunk_key(candidates[i].chunk)).random(),
    )
    return set(ranked[:count])


def raft_example(
    candidate: Candidate,
    scope_chunks: Sequence[CorpusChunk],
    instructions: Sequence[str],
    *,
    distractors: int,
    with_gold: bool = True,
    seed: int = 0,
    shape: RaftShape = "specialist",
) -> BuiltExample:
    """One retrieval-aware example for a grounded candidate; distractors are chunks of the same
    scope, among those a retriever would put beside it (`nearest`), that do not state its answer
    (so an example "without gold" really lacks it)."""
    rng = _rng(str(seed), candidate.question, chunk_key(candidate.chunk))
    gold = candidate.chunk
    others = [
        c
        for c in scope_chunks
        if chunk_key(c) != chunk_key(gold)
        and not supported_by(candidate.answer, [c.text], candidate.question)
    ]
    picked = rng.sample(nearest(gold, others, 2 * distractors), min(distractors, len(others)))
    with_gold = with_gold or not picked
    passages = [c.text for c in picked]
    if with_gold:
        passages.insert(rng.randint(0, len(passages)), gold.text)
    chosen = rng.choice(list(instructions) or [DEFAULT_INSTRUCTIONS])
    system, user = specialist_messages(chosen, candidate.question, passages)
    answer = candidate.answer if with_gold else NOT_FOUND_ANSWER
    if shape == "chat":
        system, reply = chosen, answer
    else:
        reply = specialist_answer(answer)
    return BuiltExample(
        "raft",
        (
            Message(role="system", content=system),
            Message(role="user", content=user),
            Message(role="assistant", content=reply),
        ),
        chunk_key(gold),
        candidate.generator,
        also=tuple(chunk_key(c) for c in picked),
    )
