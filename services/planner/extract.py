"""Composing an answer a 135M model cannot spoil: extract what answers each part, then phrase it.

1. The question is split into its parts (`checks.question_parts`).
2. For each part, the best unit is picked among the specialists' answer sentences and the
   passages' units (a sentence, a bullet, or a numbered list under its heading): the one sharing
   most of the part's terms, adding something to the question (never an echo); what a passage
   supports always beats what none does. A part nothing answers is written as "<part>: not in
   the documents."
3. A request to write something ("Write a reply ...") takes the best specialist answer whole.
4. The primary LLM may phrase the extracted sentences (`compose_phrase`); its text is kept only if
   it passes the checks — no echo (retried once with another prompt), no repeated sentence, every
   extracted number and most extracted terms kept. Otherwise the extracted sentences stand.
5. The answer cites exactly the passages that support one of its sentences
   (`checks.supported_by`); with none it says that no document states it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from loraswarm.services.planner.compose import ComposeOutcome
from loraswarm.services.planner.llm import LLMError, PrimaryLLM, parse_json_object
from loraswarm.services.planner.state import PlannerState
from loraswarm.shared import answer_checks as checks
from loraswarm.shared.events import Citation, Recommendation, TokenUsage

# A part counts as answered by a unit sharing at least this share of the part's terms.
MIN_RELEVANCE = 0.34
# Phrasing may drop a few filler terms, not facts.
PHRASE_KEEPS = 0.8
UNSUPPORTED_NOTE = "No document I was given states this."
_TASK_VERBS = frozenset(
    ["write", "draft", "compose", "reply", "rewrite", "summarize", "summarise", "translate", "create"]
)
_LIST_ITEM = re.compile(r"^\s*(\d{1,2}[.)]|[-*•])\s+")
_NUMBERED = re.compile(r"^\s*\d{1,2}[.)]\s+")


class Phrased(BaseModel):
    """The one field the primary LLM fills when phrasing (strict-schema ready)."""

    model_config = ConfigDict(extra="forbid")

    answer: str


@dataclass(frozen=True)
class Unit:
    text: str  # what goes into the answer
    about: str  # what relevance is judged on (the unit with its heading)
    origin: str  # "passage" or the specialist's name
    supported: bool
    is_list: bool = False


@dataclass
class Extraction:
    parts: list[str]
    picked: list[Unit | None] = field(default_factory=list)

    def text(self) -> str:
        lines = []
        for part, unit in zip(self.parts, self.picked, strict=True):
            # One sentence, whatever the part holds: the marker and the part it names stay together.
            named = re.sub(r"[.!?]+\s+", ", ", part)
            lines.append(unit.text if unit else f"{named[:1].upper()}{named[1:]}: {checks.NOT_IN_DOCUMENTS}.")
        return "\n".join(checks.without_repeats(lines))


def passage_units(text: str) -> list[tuple[str, str, bool]]:
    """(text, about, is_list): prose sentences, bullets, and numbered lists kept whole."""
    units: list[tuple[str, str, bool]] = []
    title = heading = ""  # the document's title and the current section's: what a unit is about
    numbered: list[str] = []

    def flush() -> None:
        if numbered:
            units.append(("\n".join(numbered), f"{title} {heading} " + " ".join(numbered), True))
            numbered.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        # A heading: markdown's, or the chunker's "Title > Section" line (no closing punctuation).
        if line.startswith("#") or (not _LIST_ITEM.match(line) and line[-1] not in ".!?:;)\"'"):
            flush()
            heading = line.lstrip("# ")
            if line.startswith("# ") or not title:
                title, heading = heading, ""
            continue
        if _NUMBERED.match(line):
            numbered.append(line)
            continue
        flush()
        line = _LIST_ITEM.sub("", line)
        for sentence in checks.sentences(line):
            units.append((sentence, f"{title} {heading} {sentence}", False))
    flush()
    return units


def is_task(question: str) -> bool:
    """A request to write something, not a question: its answer is a specialist's text, whole."""
    words = question.strip().split()
    return "?" not in question and bool(words) and words[0].lower().strip(",.:") in _TASK_VERBS


def candidates(state: PlannerState) -> list[Unit]:
    question = state.request.question
    texts = [p.text for p in state.passages]
    units: list[Unit] = []
    for task in state.tasks.values():
        if task.result is None or task.result.error:
            continue
        for sentence in checks.sentences(task.result.answer):
            if (
                checks.is_echo_sentence(sentence, question)
                or not checks.own_terms(sentence, question)
                or checks.loops(sentence)
            ):
                continue
            supported = any(checks.supports(sentence, t, question) for t in texts)
            units.append(Unit(sentence, sentence, task.specialist, supported))
    for text in texts:
        for unit_text, about, is_list in passage_units(text):
            if checks.own_terms(unit_text, question) and not checks.is_echo_sentence(unit_text, question):
                units.append(Unit(unit_text, about, "passage", True, is_list))
    return units


_LIST_WORDS = frozenset(["step", "checklist", "order", "process", "procedure", "list"])


def relevance(unit: Unit, part: str, vocabulary: set[str]) -> float:
    """The share of the part's terms the unit is about. Terms no candidate has ("steps", "in
    order") cannot tell candidates apart and are left out of the share."""
    asked = checks.terms(part)
    wanted = (asked & vocabulary) or asked
    score = len(checks.terms(unit.about) & wanted) / len(wanted) if wanted else 0.0
    if unit.is_list and asked & _LIST_WORDS:
        score += 0.2  # a question for steps is answered by the list, not by one line of it
    return score


def extract(state: PlannerState) -> Extraction:
    parts = checks.question_parts(state.request.question)
    units = candidates(state)
    # The terms relevance is judged on come from what a passage supports (all units when nothing
    # is): the question's words that an unsupported specialist sentence repeats ("gearbox seal")
    # would otherwise raise the bar for the passage that states the rule, which shares fewer.
    judged = [u for u in units if u.supported] or units
    vocabulary = set().union(*(checks.terms(u.about) for u in judged)) if judged else set()
    extraction = Extraction(parts)
    for part in parts:
        best: tuple[tuple[bool, float], Unit] | None = None
        for unit in units:
            score = relevance(unit, part, vocabulary)
            if score < MIN_RELEVANCE:
                continue
            # What a passage states beats what only a specialist said, however many of the
            # question's words the latter repeats: a specialist sentence that restates the
            # scenario ("provide a refund for the tent purchased 45 days ago") outscores the rule
            # on relevance, and would be answered with no citation. A specialist's supported
            # sentence beats the raw passage (it is already phrased as an answer).
            key = (unit.supported, score + 0.02 * (unit.origin != "passage"))
            if best is None or key > best[0]:
                best = (key, unit)
        extraction.picked.append(best[1] if best else None)
    return extraction


def best_specialist_answer(state: PlannerState) -> str:
    """The specialist answer with most passage support and no echo, its repeats removed."""
    question = state.request.question
    texts = [p.text for p in state.passages]
    scored = []
    for task in state.tasks.values():
        if task.result is None or task.result.error or not task.result.answer.strip():
            continue
        kept = [
            s
            for s in checks.sentences(task.result.answer)
            if not checks.is_echo_sentence(s, question) and not checks.loops(s)
        ]
        answer = "\n".join(checks.without_repeats(kept))
        if answer:
            scored.append((len(checks.supported_by(answer, texts, question)), answer))
    return max(scored, key=lambda x: x[0])[1] if scored else ""


_PROMPTS = (
    "Rewrite the facts as a short answer to the question. Keep every name, number and code.",
    "State the facts below in plain sentences. Do not repeat the question. Keep every name and number.",
)


def phrasing_messages(question: str, facts: str, attempt: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": _PROMPTS[attempt] + " Answer with JSON only."},
        {"role": "user", "content": f"Question: {question}\nFacts:\n{facts}"},
    ]


def phrasing_problem(phrased: str, extracted: str, question: str) -> str | None:
    """Why a phrased answer may not replace the extracted one, or None."""
    if not phrased.strip():
        return "empty"
    if checks.echoes(phrased, question):
        return "echo"
    if checks.repeated_sentences(phrased):
        return "repetition"
    parts = checks.question_parts(question)
    for part in parts:
        if checks.part_answered(extracted, part, parts, question) and not checks.part_answered(
            phrased, part, parts, question
        ):
            return f"left out {part!r}"
    lost_numbers = checks.numbers(extracted) - checks.terms(phrased)
    if lost_numbers:
        return f"dropped {sorted(lost_numbers)}"
    facts = checks.own_terms(extracted, question)
    if facts and len(facts & checks.terms(phrased)) / len(facts) < PHRASE_KEEPS:
        return "dropped facts"
    return None


@dataclass
class Phrasing:
    text: str
    usage: TokenUsage
    llm_ms: float
    notes: list[str]


async def phrase(
    llm: PrimaryLLM, question: str, extracted: str, *, max_tokens: int, timeout_s: float
) -> Phrasing:
    """The LLM's phrasing if it passes the checks (an echo is retried once, with the other prompt)."""
    usage = TokenUsage()
    llm_ms = 0.0
    notes: list[str] = []
    schema: dict[str, Any] = phrased_schema()
    # A phrasing says what the extract says, in about as many words: the budget is the extract's
    # length (about 3 characters a token) plus room for the JSON and some rewording, so a model
    # that rambles is cut off early instead of decoding `compose_max_tokens` tokens to be refused.
    max_tokens = min(max_tokens, len(extracted) // 3 + PHRASE_SLACK_TOKENS)
    for attempt in (0, 1):
        try:
            completion = await llm.complete_json(
                phrasing_messages(question, extracted, attempt),
                schema=schema,
                schema_name="answer",
                max_tokens=max_tokens,
                timeout_s=timeout_s,
                extra_body=_no_repeat(llm),
            )
        except LLMError as exc:
            notes.append(f"kept the extracted sentences: phrasing failed ({str(exc).splitlines()[0][:120]})")
            break
        usage = TokenUsage(
            input_tokens=usage.input_tokens + completion.usage.input_tokens,
            output_tokens=usage.output_tokens + completion.usage.output_tokens,
        )
        llm_ms += completion.duration_ms
        try:
            text = Phrased.model_validate(parse_json_object(completion.text)).answer.strip()
        except (LLMError, ValidationError):
            notes.append("kept the extracted sentences: the phrasing was not valid JSON")
            break
        problem = phrasing_problem(text, extracted, question)
        if problem is None:
            return Phrasing(text, usage, llm_ms, notes)
        notes.append(f"phrasing attempt {attempt + 1} rejected ({problem})")
        if problem != "echo":
            break  # only an echo is worth another prompt; the rest is the model's limit
    return Phrasing(extracted, usage, llm_ms, notes)


PHRASE_SLACK_TOKENS = 32

# Six tokens: a sentence said twice is blocked at the model, while a phrase such as "at Northwind
# Freight" may still come back in the second part of an answer.
NO_REPEAT_NGRAM = 6


def _no_repeat(llm: PrimaryLLM) -> dict[str, Any] | None:
    """The model server's extension, sent only to it (`tgi`): OpenAI refuses unknown fields."""
    return {"no_repeat_ngram_size": NO_REPEAT_NGRAM} if llm.settings.embedded_primary else None


def phrased_schema() -> dict[str, Any]:
    from openai.lib._pydantic import to_strict_json_schema

    return to_strict_json_schema(Phrased)


def cited(state: PlannerState, text: str) -> list[int]:
    """The passages (indexes) that support a sentence of the text, one per chunk."""
    question = state.request.question
    indexes = checks.supported_by(text, [p.text for p in state.passages], question)
    seen: set[tuple[str, int]] = set()
    unique = []
    for i in indexes:
        key = (state.passages[i].citation.doc_id, state.passages[i].citation.position)
        if key not in seen:
            seen.add(key)
            unique.append(i)
    return unique


async def compose_extractive(
    llm: PrimaryLLM | None, state: PlannerState, *, max_tokens: int, timeout_s: float, phrase_it: bool
) -> ComposeOutcome:
    """The recommendation (see the module docstring); `llm` None: no phrasing (the deadline)."""
    question = state.request.question
    notes: list[str] = []
    usage = TokenUsage()
    llm_ms = 0.0
    extraction = extract(state)
    if is_task(question):
        text = best_specialist_answer(state) or extraction.text()
    else:
        text = extraction.text()
        lists = any(u is not None and u.is_list for u in extraction.picked)
        found = any(u is not None for u in extraction.picked)
        # Lists stay as they are: phrasing a numbered process is where order gets lost.
        if llm is not None and phrase_it and found and not lists:
            phrased = await phrase(llm, question, text, max_tokens=max_tokens, timeout_s=timeout_s)
            text, usage, llm_ms, notes = phrased.text, phrased.usage, phrased.llm_ms, phrased.notes
    text = "\n".join(checks.without_repeats(checks.sentences(text))) if not _has_list(text) else text
    indexes = cited(state, text)
    missing = [p for p, u in zip(extraction.parts, extraction.picked, strict=True) if u is None]
    if missing and not is_task(question):
        notes.append(f"not in the documents: {'; '.join(missing)}")
    recommendation = Recommendation(
        title=_title(text, [state.passages[i].citation for i in indexes]),
        text=text,
        # Said beside the text, not in it: a written reply keeps the form its rules ask for.
        rationale="" if indexes else UNSUPPORTED_NOTE,
        citations=[state.passages[i].citation for i in indexes],
    )
    return ComposeOutcome([recommendation], "", usage, notes, llm_ms)


def _has_list(text: str) -> bool:
    return sum(bool(_LIST_ITEM.match(line)) for line in text.splitlines()) >= 2


def _title(text: str, citations: list[Citation]) -> str:
    """The first cited document's title, else the answer's first words: never the question's,
    which a title cut from it only repeats ("A customer wants a refund for a tent")."""
    title = next((c.title for c in citations if c.title.strip()), "") or " ".join(
        checks.sentences(text)[0].split()[:8] if text.strip() else []
    )
    title = " ".join(title.split())
    return (title[:57] + "...") if len(title) > 60 else title or "Answer"
