"""Questions and answers read off a chunk's structure, with no model: the builder's floor.

A chunk is its heading line(s) and body (services/ingestion/chunking.py puts the heading path
first). What the extractor reads, and what it writes from it:

    numbered list under a heading     process: "What are the steps, in order, for <heading>?" → the
                                       steps, numbered, in the document's order
    "For <task>: a, then b, then c."  process, the same way (and "<task>: 1. a, 2. b, ...")
    "| a | b |" table rows            a fact per cell: "What is the <column> of <row>?"
    "Key: value" lines                 a fact: "What is the <key>?" → "The <key> is <value>."
    "<subject> is <value>." sentences  a fact: "What/Where/When is <subject>?" → the sentence
    sentences with a number, a code,   a fact per such span: the sentence with the span asked for
    an e-mail, a date or a name        ("Standard shipping costs how much?"), and the inverse
                                       ("What do the documents say about VORHAL-394?")

Every answer is the document's own words (a user's notes turned to "you"), so grounding holds
by construction; the builder checks it anyway, as it does for the LLM's answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from loraswarm.services.trainer.builder.model import Candidate, GeneratorOutput
from loraswarm.services.trainer.corpus import CorpusChunk
from loraswarm.shared.answer_checks import sentences

_NUMBERED = re.compile(r"^\s*(\d{1,3})[.)]\s+(.+)$")
_BULLET = re.compile(r"^\s*[-*\u2022]\s+(.+)$")
_KEY_VALUE = re.compile(r"^(?P<key>[A-Za-z][\w '/()-]{0,40}?):\s+(?P<value>\S.*)$")
_INLINE_LIST = re.compile(r"^(?P<task>[^:]{3,80}):\s*1[.)]\s+(?P<steps>.+\s2[.)]\s.+)$")
_INLINE_ITEM = re.compile(r"(?:^|[,;]?\s+)\d{1,2}[.)]\s+")
_THEN = re.compile(r"^(?:For|To)\s+(?P<task>[^:]{3,80}):\s+(?P<steps>.+?)\.?$")
_COPULA = re.compile(
    r"^(?P<subject>(?:The|My|Our|Your|Its|Their|This|That)\s.{3,80}?|[A-Z][^,]{3,80}?)\s"
    r"(?P<verb>is|are|was|were)\s(?P<prep>in|at|on|every|from)?\s?(?P<object>.+?)[.!]?$"
)
# A user's note about themself: "I work in the logistics team." → "Which team do I work in?"
# A present-tense verb ("am", "was" and "worked" would make "Which office do I am in?"), and
# no second preposition before the noun ("I live in a flat with a balcony" is not about a balcony).
_FIRST_PERSON = re.compile(
    r"^I (?P<verb>(?!(?:am|was|were|have|had)\b)[a-z]+(?<!ed)) (?P<prep>in|at|on|for|with|from) "
    r"(?P<object>(?:the|a|an) (?:(?!(?:in|at|on|for|with|from|of)\b)[\w-]+ ){0,3}(?P<noun>[a-z][\w-]*))[.!]?$"
)
_WEEKDAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
# Span patterns, most specific first: (kind, pattern).
_SPANS: list[tuple[str, re.Pattern[str]]] = [
    ("email", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("time", re.compile(r"\b\d{1,2}:\d{2}(?:\s*(?:to|-|until)\s*\d{1,2}:\d{2})?")),
    ("date", re.compile(rf"\b(?:\d{{1,2}}\s(?:{_MONTHS})(?:\s\d{{4}})?|(?:{_MONTHS})\s\d{{1,2}}(?:,\s\d{{4}})?|\d{{4}}-\d{{2}}-\d{{2}})\b")),
    ("money", re.compile(r"(?:[€$£]\s?\d[\d,.]*|\b\d[\d,.]*\s?(?:euros?|EUR|dollars?|USD|pounds?|GBP)\b)")),
    ("amount", re.compile(r"\b\d[\d,.]*[- ](?:days?|weeks?|months?|years?|hours?|minutes?|percent|%|km|kg|items?|people)\b")),
    ("day", re.compile(rf"\b(?:{_WEEKDAYS})s?\b")),
    ("code", re.compile(r"\b[A-Z][A-Z0-9]{1,}(?:-[A-Z0-9]+)+\b|\b[A-Z]{3,}\b")),
    ("number", re.compile(r"\b\d[\d,.]*\b")),
    ("name", re.compile(r"\b(?!(?:The|A|An|My|Our|Your|Every|Each|This|That|In|On|At|For|If)\b)[A-Z][a-zà-ÿ]+(?:\s[A-Z][a-zà-ÿ]+)+\b")),
]  # fmt: skip
_ASK = {
    "email": "which e-mail address",
    "time": "what time",
    "date": "what date",
    "money": "how much",
    "amount": "how many {unit}",
    "day": "which day",
    "code": "what",
    "number": "what number",
    "name": "who",
}
_MAX_SPANS = 2  # per sentence: more makes near-identical questions, not paraphrases


@dataclass(frozen=True)
class Block:
    """A run of a chunk's lines under one heading (the last part of its heading path)."""

    heading: str
    lines: list[str]


def blocks(text: str) -> list[Block]:
    """The chunk's sections: a paragraph opens a new section when its first line is a heading
    line (no sentence end, short) sharing the chunk's first heading's top part."""
    out: list[Block] = []
    top = ""
    for i, paragraph in enumerate(p for p in text.split("\n\n") if p.strip()):
        lines = [line.rstrip() for line in paragraph.split("\n") if line.strip()]
        first = lines[0].strip()
        heading_like = not re.search(r"[.!?:]$", first) and len(first.split()) <= 12 and "|" not in first
        if (
            i == 0
            and heading_like
            and len(lines) > 0
            and not _NUMBERED.match(first)
            and not _BULLET.match(first)
        ):
            top = first.split(" > ")[0]
            out.append(Block(first.split(" > ")[-1], lines[1:]))
        elif top and heading_like and first.split(" > ")[0] == top:
            out.append(Block(first.split(" > ")[-1], lines[1:]))
        elif out:
            out[-1].lines.extend(lines)
        else:
            out.append(Block("", lines))
    return out


def title_of(text: str) -> str:
    first = text.split("\n", 1)[0].strip()
    return "" if re.search(r"[.!?]$", first) else first.split(" > ")[0]


def second_person(text: str) -> str:
    """A user's own notes said back to them ("My slot is ..." → "Your slot is ...")."""
    swaps = [
        (r"\bI am\b", "you are"),
        (r"\bI'm\b", "you're"),
        (r"\bI\b", "you"),
        (r"\bmy\b", "your"),
        (r"\bMy\b", "Your"),
        (r"\bme\b", "you"),
    ]
    for pattern, repl in swaps:
        text = re.sub(pattern, repl, text)
    return text[:1].upper() + text[1:]


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[1:2].islower() or len(text) == 1 else text


def _user_possessive(heading: str, user: str | None) -> str:
    """ "Ana's start-of-day checklist" asked by Ana is "my start-of-day checklist"."""
    if user and heading.lower().startswith(f"{user.lower()}'s "):
        return "my " + heading[len(user) + 3 :]
    return _lower_first(heading)


class StructureExtractor:
    """The deterministic generator (see the module docstring)."""

    name = "extractor"

    def __init__(self, phrasings: int = 3) -> None:
        self.phrasings = max(1, phrasings)

    def generate(self, chunk: CorpusChunk) -> GeneratorOutput:
        out = GeneratorOutput()
        try:
            out.candidates = list(self._candidates(chunk))
        except Exception as exc:  # a rule that trips on odd text must not stop the build
            out.failures[f"extractor error ({type(exc).__name__})"] += 1
        return out

    # ------------------------------------------------------------------ rules

    def _candidates(self, chunk: CorpusChunk) -> Iterator[Candidate]:
        user = chunk.visibility.removeprefix("user:") if chunk.visibility.startswith("user:") else None
        title = title_of(chunk.text)
        for block in blocks(chunk.text):
            yield from self._processes(chunk, block, user)
            yield from self._table(chunk, block)
            for line in block.lines:
                if _NUMBERED.match(line) or "|" in line:
                    continue
                bullet = _BULLET.match(line)
                body = bullet.group(1) if bullet else line.strip()
                if _THEN.match(body):
                    continue
                inline = _INLINE_LIST.match(body)
                if inline:
                    # "The repair process: 1. log the item, 2. photograph the damage, ..."
                    steps = [
                        p.strip(" ,.;") for p in _INLINE_ITEM.split(inline.group("steps")) if p.strip(" ,.;")
                    ]
                    if len(steps) >= 2:
                        yield from self._process(chunk, inline.group("task").strip(), steps, user)
                        continue
                kv = _KEY_VALUE.match(body)
                if kv and ", then " in kv.group("value") and block.heading:
                    # "In short: a, then b": the block's process said again in one line.
                    steps = [p.strip() for p in kv.group("value").rstrip(".").split(", then ") if p.strip()]
                    yield from self._process(chunk, block.heading, steps, user)
                    continue
                if kv and len(kv.group("key").split()) <= 5 and not re.search(r"[.!?]\s", kv.group("value")):
                    yield from self._key_value(chunk, block, kv.group("key"), kv.group("value"), user)
                    continue
                for sentence in sentences(body):
                    yield from self._sentence(chunk, sentence, title, user)

    def _process(
        self, chunk: CorpusChunk, task: str, steps: list[str], user: str | None
    ) -> Iterator[Candidate]:
        what = _user_possessive(task, user)
        answer = "\n".join(f"{i}. {s[:1].upper()}{s[1:].rstrip('.')}." for i, s in enumerate(steps, 1))
        if "checklist" in task.lower() or "list" in task.lower().split():
            asks = [
                f"What is on {what}, in order?",
                f"What are the items of {what}, in order?",
                f"Walk me through {what}.",
            ]
        else:
            asks = [f"What are the steps, in order, for {what}?", f"How do I go about {what}?", f"What is the process for {what}?"]  # fmt: skip
        for question in asks[: self.phrasings]:
            yield Candidate("process", question, answer, chunk, self.name)

    def _processes(self, chunk: CorpusChunk, block: Block, user: str | None) -> Iterator[Candidate]:
        steps = [m.group(2).strip() for line in block.lines if (m := _NUMBERED.match(line))]
        # Two numbered lines at least, and only a chunk that holds the list's start: a list cut
        # by chunking would teach a process that starts in the middle.
        starts = any((m := _NUMBERED.match(line)) and m.group(1) == "1" for line in block.lines)
        if len(steps) >= 2 and starts and block.heading:
            yield from self._process(chunk, block.heading, steps, user)
        for line in block.lines:
            then = _THEN.match(line.strip())
            if then and ", then " in then.group("steps"):
                parts = [s.strip() for s in then.group("steps").split(", then ") if s.strip()]
                yield from self._process(chunk, then.group("task"), parts, user)

    def _table(self, chunk: CorpusChunk, block: Block) -> Iterator[Candidate]:
        rows = [
            [cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in block.lines
            if line.strip().startswith("|") and line.strip().endswith("|")
        ]
        rows = [r for r in rows if not all(re.fullmatch(r":?-{2,}:?", c) for c in r if c)]
        if len(rows) < 2:
            return
        header, *body = rows
        for row in body:
            if len(row) != len(header) or not row[0]:
                continue
            for column, value in zip(header[1:], row[1:], strict=True):
                if not value:
                    continue
                answer = f"The {column.lower()} of {row[0]} is {value}."
                yield Candidate(
                    "fact", f"What is the {column.lower()} of {row[0]}?", answer, chunk, self.name
                )
                yield Candidate(
                    "fact", f"Which {header[0].lower()} has {column.lower()} {value}?",
                    f"{row[0]} has {column.lower()} {value}.", chunk, self.name,
                )  # fmt: skip

    def _key_value(
        self, chunk: CorpusChunk, block: Block, key: str, value: str, user: str | None
    ) -> Iterator[Candidate]:
        k = _lower_first(key.strip())
        answer = f"The {k} is {value.strip().rstrip('.')}."
        asks = [f"What is the {k}?"]
        if block.heading:
            asks.append(f"What is the {k} for {_user_possessive(block.heading, user)}?")
        asks.append(f"Which {k} is given in the documents?")
        for question in asks[: self.phrasings]:
            yield Candidate("fact", question, answer, chunk, self.name)
        yield Candidate("fact", f"What is {value.strip().rstrip('.')}?", answer, chunk, self.name)

    def _sentence(
        self, chunk: CorpusChunk, sentence: str, title: str, user: str | None
    ) -> Iterator[Candidate]:
        sentence = sentence.strip()
        # A fragment (a chunk cut mid-sentence), a heading or a line too short to state a fact.
        if not sentence[:1].isupper() or not re.search(r"[.!?]$", sentence) or len(sentence.split()) < 4:
            return
        answer = second_person(sentence) if user else sentence
        asked: list[str] = []
        copula = _COPULA.match(sentence)
        if copula and len(copula.group("subject").split()) >= 2:
            wh = {"in": "Where", "at": "When", "on": "When", "every": "When", "from": "When"}.get(
                copula.group("prep") or "", "What"
            )
            asked.append(f"{wh} {copula.group('verb')} {_lower_first(copula.group('subject'))}?")
        mine = _FIRST_PERSON.match(sentence) if user else None
        if mine:  # no span to ask for: the object of the verb is the fact
            asked.append(f"Which {mine.group('noun')} do I {mine.group('verb')} {mine.group('prep')}?")
        spans = self._spans(sentence, title)
        for kind, span in spans[:_MAX_SPANS]:
            asked.append(self._cloze(sentence, kind, span))
        if not asked:
            return
        phrased = [
            *asked[:1],
            *(f"{q[:-1]}, according to {title}?" for q in asked[:1] if title),
            *(f"Quick question: {q}" for q in asked[:1]),
        ][: self.phrasings]
        for question in dict.fromkeys([*phrased, *asked[1:]]):
            yield Candidate("fact", question, answer, chunk, self.name)
        # The other direction: from the value to what it is.
        for _, span in spans[:_MAX_SPANS]:
            yield Candidate("fact", f"What do the documents say about {span}?", answer, chunk, self.name)

    @staticmethod
    def _spans(sentence: str, title: str) -> list[tuple[str, str]]:
        taken: list[tuple[int, int]] = []
        found: list[tuple[int, str, str]] = []
        for kind, pattern in _SPANS:
            for m in pattern.finditer(sentence):
                if any(m.start() < end and start < m.end() for start, end in taken):
                    continue
                # The topic (the company's name in its own handbook) is not the fact.
                if kind in ("name", "code") and m.group(0) in title:
                    continue
                if kind == "name" and m.start() == 0 and len(m.group(0).split()) < 2:
                    continue
                taken.append((m.start(), m.end()))
                found.append((m.start(), kind, m.group(0)))
        return [(kind, span) for _, kind, span in sorted(found)]

    @staticmethod
    def _cloze(sentence: str, kind: str, span: str) -> str:
        ask = _ASK[kind]
        if kind == "amount":
            unit = re.sub(r"^[\d,.]+[- ]", "", span)
            ask = ask.format(unit=unit if unit.endswith("s") or unit == "%" else unit + "s")
        body = sentence.rstrip(".!?")
        start = body.find(span)
        if start == 0:
            rest = body[len(span) :].strip()
            return f"{ask[:1].upper()}{ask[1:]} {rest}?"
        return f"{body[:start]}{ask}{body[start + len(span) :]}?"
