"""One scope's chunks → its supervised examples: generate, check grounding, derive style and RAFT.

    generate      every generator on every chunk (the extractor, the LLM); failures counted
    ground        a candidate whose answer states something its chunk does not is dropped
                  (`answer_checks.ungrounded_claims`, the support score the planner and the
                  eval use), as is one that adds nothing to its question, or a repeat
    style         kept answers rewritten by the scope's own writing rules (style.py)
    raft          kept answers asked with passages, in the specialists' prompt (raft.py)

The builder reads nothing but the chunks it is handed — the trainer hands it exactly
`corpus.chunks(scope)` — so a scope's set can only hold that scope's text and fixed templates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from itertools import product

from loraswarm.services.trainer.builder.model import (
    BuiltExample,
    BuiltSet,
    Candidate,
    Drop,
    Generator,
    chunk_key,
)
from loraswarm.services.trainer.builder.raft import raft_example, without_gold
from loraswarm.services.trainer.builder.style import breaks_rules, read_rules, style_sources, styled
from loraswarm.services.trainer.corpus import CorpusChunk
from loraswarm.services.trainer.examples import Message
from loraswarm.shared.answer_checks import claims, own_terms, ungrounded_claims
from loraswarm.shared.settings.trainer import BuilderSettings

_STYLE_ASKS = ("Write a short reply to a customer who asks: {q}", "A customer asks: {q} Write the reply.")


def ground(candidate: Candidate, passages: Sequence[str]) -> str | None:
    """Why the candidate cannot be trained on, or None: its answer must add something to the
    question, and every claim of it must be supported by one of `passages`."""
    if not any(own_terms(c, candidate.question) for c in claims(candidate.answer)):
        return "adds nothing to the question"
    if ungrounded_claims(candidate.answer, passages, candidate.question):
        return "ungrounded"
    return None


def _pair(
    kind: str, question: str, answer: str, source: CorpusChunk, generator: str, also: tuple[str, ...] = ()
) -> BuiltExample:
    messages = (Message(role="user", content=question), Message(role="assistant", content=answer))
    return BuiltExample(kind, messages, chunk_key(source), generator, also)  # type: ignore[arg-type]


class TrainingSetBuilder:
    """Builds one scope's examples with the given generators (see the module docstring); what
    and how many it derives are the trainer's `builder` settings, their defaults where none are given."""

    def __init__(
        self,
        generators: Sequence[Generator],
        options: BuilderSettings | None = None,
        instructions: Sequence[str] = (),
    ) -> None:
        self.generators = list(generators)
        self.options = options or BuilderSettings()
        self.instructions = list(instructions)  # the scope's specialists' system prompts (RAFT)

    def build(self, chunks: Sequence[CorpusChunk]) -> BuiltSet:
        started = time.perf_counter()
        ordered = sorted(chunks, key=lambda c: (c.doc_id, c.position))
        out = BuiltSet(chunks=len(ordered))
        kept = self._grounded(ordered, out)
        out.examples += [_pair(c.kind, c.question, c.answer, c.chunk, c.generator) for c in kept]
        self._style(ordered, kept, out)
        self._raft(ordered, kept, out)
        out.seconds = time.perf_counter() - started
        return out

    def _grounded(self, chunks: Sequence[CorpusChunk], out: BuiltSet) -> list[Candidate]:
        kept: list[Candidate] = []
        seen: set[tuple[str, str, str]] = set()
        for chunk in chunks:
            for generator in self.generators:
                made = generator.generate(chunk)
                for reason, n in made.failures.items():
                    out.failures[f"{generator.name}: {reason}"] += n
                for candidate in made.candidates:
                    # Repeats inside one document only: a fact a second document states again is
                    # trained from both, so holding one document out does not lose the fact.
                    key = (chunk.doc_id, candidate.kind, " ".join(candidate.question.lower().split()))
                    why = "duplicate" if key in seen else ground(candidate, [chunk.text])
                    if why is not None:
                        out.drops.append(
                            Drop(
                                candidate.kind,
                                why,
                                chunk_key(chunk),
                                f"{candidate.generator}: {candidate.answer[:120]}",
                            )
                        )
                        continue
                    seen.add(key)
                    kept.append(candidate)
        return kept

    def _style(self, chunks: Sequence[CorpusChunk], kept: Sequence[Candidate], out: BuiltSet) -> None:
        rules = read_rules(chunks)
        if rules.empty or not self.options.style_examples:
            return
        style_texts = [c.text for c in rules.chunks]
        # One fact per distinct answer, taken round-robin over chunks: the style is learned on
        # varied content, not on one document's.
        by_chunk: dict[str, list[Candidate]] = {}
        answers: set[str] = set()
        for c in kept:
            if c.kind == "fact" and c.answer not in answers and c.chunk not in rules.chunks:
                answers.add(c.answer)
                by_chunk.setdefault(chunk_key(c.chunk), []).append(c)
        picked: list[Candidate] = []
        while len(picked) < self.options.style_examples and any(by_chunk.values()):
            for queue in by_chunk.values():
                if queue and len(picked) < self.options.style_examples:
                    picked.append(queue.pop(0))
        styled_with_passages = 0
        for i, c in enumerate(picked):
            question = _STYLE_ASKS[i % len(_STYLE_ASKS)].format(q=c.question)
            reply = styled(c.answer, rules)
            broken = breaks_rules(reply, rules)
            derived = Candidate("fact", question, reply, c.chunk, c.generator)
            why = broken or ground(derived, [c.chunk.text, *style_texts])
            if why is not None:
                out.drops.append(Drop("style", why, chunk_key(c.chunk), reply[:120]))
                continue
            sources = tuple(style_sources(rules))
            out.examples.append(_pair("style", question, reply, c.chunk, c.generator, sources))
            if styled_with_passages < self.options.raft_style:
                styled_with_passages += 1
                out.examples.append(self._style_with_passages(derived, chunks, sources))

    def _style_with_passages(
        self, styled_reply: Candidate, chunks: Sequence[CorpusChunk], sources: tuple[str, ...]
    ) -> BuiltExample:
        """A style reply asked with passages (gold among distractors, the chat shape): trained on
        replies without passages alone, the adapters wrote the scope's greeting closed-book and
        dropped it as soon as the prompt carried documents, answering like a retrieval-aware
        example (BENCHMARKS.md, personalization-medium: style with passages 0.51, RAG's 0.53)."""
        o = self.options
        made = raft_example(
            styled_reply, chunks, self.instructions, distractors=o.raft_distractors, shape="chat"
        )
        return replace(made, kind="style", also=sources + made.also)

    def _raft(self, chunks: Sequence[CorpusChunk], kept: Sequence[Candidate], out: BuiltSet) -> None:
        """Each picked candidate in one prompt shape, by turns; a scope with at most
        `raft_both_shapes_upto` of them (a user's notes) gets each in both. With a user's 5, the
        shape each question happened to get decided the adapter's format: stacked on its
        company's, it answered 4 of 6 of its user's questions in JSON in a plain chat with
        passages (BENCHMARKS.md, personalization-medium).

        Every picked question is asked with its gold passage; the `raft_no_gold_share` of them
        are asked once more without it ("not in the documents"). Asked only without it, a
        question was never trained with its passage: a user's one checklist drew the lot, and
        both users' adapters answered "not in the documents" to their checklist with it in the
        prompt (BENCHMARKS.md, personalization-medium, seed 1)."""
        o = self.options
        if not o.raft_per_chunk:
            return
        picked = _raft_candidates(kept, o.raft_per_chunk)
        both = len(picked) <= o.raft_both_shapes_upto
        lacking = without_gold(picked, o.raft_no_gold_share)
        for made, candidate in enumerate(picked):
            shapes = o.raft_shapes if both else (o.raft_shapes[made % len(o.raft_shapes)],)
            for shape, with_gold in product(shapes, (True, False) if made in lacking else (True,)):
                example = raft_example(
                    candidate, chunks, self.instructions,
                    distractors=o.raft_distractors, with_gold=with_gold, shape=shape,
                )  # fmt: skip
                if with_gold or example.also:  # no distractor to show: the gold stays, a second same example
                    out.examples.append(example)


def _raft_candidates(kept: Sequence[Candidate], per_chunk: int) -> list[Candidate]:
    """Up to `per_chunk` candidates of each chunk, taken in turn from its kinds (processes before
    facts), each answer once. Taking the first few of a chunk took its facts alone: a company's
    11 retrieval-aware examples held one process, so passages of steps were never trained on."""
    by_chunk: dict[str, dict[str, list[Candidate]]] = {}
    for c in kept:
        by_chunk.setdefault(chunk_key(c.chunk), {}).setdefault(c.kind, []).append(c)
    answers: set[str] = set()
    picked: list[Candidate] = []
    for kinds in by_chunk.values():
        queues = [kinds[k] for k in sorted(kinds, key=lambda k: k != "process")]
        taken = 0
        while taken < per_chunk and any(queues):
            for queue in queues:
                while queue and queue[0].answer in answers:
                    queue.pop(0)
                if queue and taken < per_chunk:
                    c = queue.pop(0)
                    answers.add(c.answer)
                    picked.append(c)
                    taken += 1
    return picked
