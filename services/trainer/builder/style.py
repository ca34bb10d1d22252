"""A scope's writing rules, read from its style documents, and answers written by them.

A style document is a chunk whose title or document id speaks of style, tone, voice, writing or
templates ("How Northwind writes to customers", `users/ana/writing.md`, "Ben's email
templates"). Its rules are read from plain sentences: what a reply starts with and ends (or is
signed) with, words never to use, a word limit, bullet points. A company's rules come from
company documents; a user's from that user's own notes only (their adapter is served on top of
the company's, which brings the rest).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from loraswarm.services.trainer.builder.model import chunk_key
from loraswarm.services.trainer.corpus import CorpusChunk
from loraswarm.shared.answer_checks import sentences

_STYLE_WORDS = re.compile(r"\b(?:style|tone|voice|writ\w*|brand|templates?)\b", re.I)
_QUOTED = r"[\"“'](?P<x>[^\"”']{2,80})[\"”']"
_START = re.compile(rf"\b(?:start|begin|open)\w*\s(?:[^.\"“]*?\s)?with\s+{_QUOTED}", re.I)
_END = re.compile(rf"\b(?:end|sign|close|finish)\w*\s(?:[^.\"“]*?\s)?with\s+{_QUOTED}", re.I)
_BANNED = re.compile(
    rf"\b(?:never|don't|do not|avoid)\s(?:[^.\"“]*?\s)?(?:words?|say|use|write)\s+{_QUOTED}", re.I
)
_LIMIT = re.compile(r"\b(?:under|at most|no more than|fewer than|below)\s+(\d{1,4})\s+words\b", re.I)
_MARKER = re.compile(r"^(?:\d{1,3}[.)]|[-*])\s+")
_BULLETS = re.compile(r"\bbullet(?:s| points?)\b", re.I)


@dataclass
class StyleRules:
    greeting: str | None = None
    signoff: str | None = None
    banned: list[str] = field(default_factory=list)
    max_words: int | None = None
    bullets: bool = False
    chunks: list[CorpusChunk] = field(default_factory=list)  # where the rules were read

    @property
    def empty(self) -> bool:
        return not (self.greeting or self.signoff or self.banned or self.max_words or self.bullets)


def is_style_chunk(chunk: CorpusChunk) -> bool:
    first = chunk.text.split("\n", 1)[0]
    return bool(_STYLE_WORDS.search(first) or _STYLE_WORDS.search(chunk.doc_id.rsplit("/", 1)[-1]))


def read_rules(chunks: Sequence[CorpusChunk]) -> StyleRules:
    """The rules the scope's style chunks state (the first statement of each rule wins)."""
    rules = StyleRules()
    for chunk in chunks:
        if not is_style_chunk(chunk):
            continue
        text, before = (
            chunk.text,
            (rules.greeting, rules.signoff, len(rules.banned), rules.max_words, rules.bullets),
        )
        if rules.greeting is None and (m := _START.search(text)):
            rules.greeting = m.group("x").strip()
        if rules.signoff is None and (m := _END.search(text)):
            rules.signoff = m.group("x").strip()
        rules.banned += [
            m.group("x").strip() for m in _BANNED.finditer(text) if m.group("x").strip() not in rules.banned
        ]
        if rules.max_words is None and (m := _LIMIT.search(text)):
            rules.max_words = int(m.group(1))
        rules.bullets = rules.bullets or bool(_BULLETS.search(text))
        if (rules.greeting, rules.signoff, len(rules.banned), rules.max_words, rules.bullets) != before:
            rules.chunks.append(chunk)
    return rules


def breaks_rules(text: str, rules: StyleRules) -> str | None:
    """Which rule the text itself breaks (a banned word), if any."""
    for word in rules.banned:
        if re.search(rf"\b{re.escape(word)}\b", text, re.I):
            return f"uses the banned word {word!r}"
    return None


def styled(answer: str, rules: StyleRules) -> str:
    """The answer as the rules want a reply written: greeting, body (bullets), sign-off, length."""
    body = [line.strip() for line in answer.split("\n") if line.strip()]
    if rules.bullets:
        body = ["- " + _MARKER.sub("", s) for line in body for s in sentences(line)]
    head = [rules.greeting] if rules.greeting else []
    tail = [rules.signoff] if rules.signoff else []
    if rules.max_words is not None:
        budget = rules.max_words - sum(len(x.split()) for x in head + tail)
        kept: list[str] = []
        for line in body:
            if sum(len(x.split()) for x in kept) + len(line.split()) > budget:
                break
            kept.append(line)
        body = kept or body[:1]
    return "\n".join(head + body + tail)


def style_sources(rules: StyleRules) -> list[str]:
    return [chunk_key(c) for c in rules.chunks]
