"""Scoring one answer, and bootstrap confidence intervals of a mean.

- fact: normalized contains (an accepted answer appears as whole words in the answer) and
  normalized exact match; with `all_of`, every part must be there.
- process: step recall (gold steps found) and order (the longest increasing run of the found
  steps' positions over the number found — 1.0 when they appear in the gold order; undefined
  with fewer than two found, so a one-step answer neither gains nor loses order credit).
- style: the share of the question's rules the answer satisfies, each checked by a rule below.

Style rules are strings `name` or `name: argument`:
  starts_with: TEXT   ends_with: TEXT   contains: TEXT   not_contains: TEXT
  max_words: N        bullets (two or more lines start with `-`, `*` or `•`)
  numbered (two or more lines start with `1.`, `2)` ...)     no_exclamation
"""

from __future__ import annotations

import bisect
import random
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_NON_WORD = re.compile(r"[^0-9a-z@]+")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "by",
        "with",
        "from",
        "into",
        "it",
        "its",
        "is",
        "are",
        "be",
        "then",
        "your",
        "our",
        "their",
        "this",
        "that",
    ]
)
_BULLET = re.compile(r"^\s*[-*•]\s+\S", re.M)
_NUMBERED = re.compile(r"^\s*\d{1,2}[.)]\s+\S", re.M)
RULES = ("starts_with", "ends_with", "contains", "not_contains", "max_words", "bullets", "numbered", "no_exclamation")  # fmt: skip
_NEEDS_ARGUMENT = {"starts_with", "ends_with", "contains", "not_contains", "max_words"}


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces (`@` kept for e-mail addresses), single spaces."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def contains(answer: str, expected: str) -> bool:
    """`expected` appears in `answer` as whole words, after normalizing both."""
    needle = normalize(expected)
    return bool(needle) and f" {needle} " in f" {normalize(answer)} "


def fact_scores(
    answer: str, answers: Sequence[str], all_of: Sequence[Sequence[str]] = ()
) -> tuple[float, float]:
    """(contains, exact): 1.0 or 0.0 each."""
    groups = [list(g) for g in all_of] or [list(answers)]
    if answers and all_of:
        groups.append(list(answers))
    hit = all(any(contains(answer, a) for a in group) for group in groups)
    exact = len(groups) == 1 and any(normalize(answer) == normalize(a) for a in groups[0])
    return float(hit), float(exact)


def _content_words(text: str) -> list[str]:
    return [w for w in normalize(text).split() if w not in _STOPWORDS and len(w) > 1]


def step_position(answer: str, step: str) -> int | None:
    """Where the answer states the step (a word index), or None.

    The whole step phrase first; failing that, all its content words in one line of the answer
    (a model may reword "print the label" as "label: print it"), positioned at the line's start.
    """
    words = normalize(answer).split()
    needle = normalize(step).split()
    for i in range(len(words) - len(needle) + 1):
        if words[i : i + len(needle)] == needle:
            return i
    wanted = set(_content_words(step))
    if not wanted:
        return None
    offset = 0
    for line in answer.splitlines():
        line_words = normalize(line).split()
        if wanted <= set(line_words):
            return offset
        offset += len(line_words)
    return None


def longest_increasing(values: Sequence[int]) -> int:
    """Length of the longest strictly increasing subsequence (patience sorting)."""
    tails: list[int] = []
    for v in values:
        i = bisect.bisect_left(tails, v)
        if i == len(tails):
            tails.append(v)
        else:
            tails[i] = v
    return len(tails)


def process_scores(answer: str, steps: Sequence[str]) -> tuple[float, float | None]:
    """(recall, order); order is None when fewer than two steps were found."""
    positions = [p for p in (step_position(answer, s) for s in steps) if p is not None]
    recall = len(positions) / len(steps) if steps else 0.0
    if len(positions) < 2:
        return recall, None
    return recall, longest_increasing(positions) / len(positions)


@dataclass(frozen=True)
class StyleRule:
    name: str
    argument: str

    def check(self, answer: str) -> bool:
        return _CHECKS[self.name](answer.strip(), self.argument)


def parse_rule(text: str) -> StyleRule:
    name, _, argument = text.partition(":")
    name, argument = name.strip(), argument.strip()
    if name not in RULES:
        raise ValueError(f"unknown style rule {text!r}; known: {', '.join(RULES)}")
    if name in _NEEDS_ARGUMENT and not argument:
        raise ValueError(f"style rule {name!r} needs an argument, e.g. `{name}: ...`")
    if name == "max_words" and not argument.isdigit():
        raise ValueError(f"max_words needs a whole number, got {argument!r}")
    return StyleRule(name, argument)


_CHECKS: dict[str, Callable[[str, str], bool]] = {
    "starts_with": lambda a, x: normalize(a).startswith(normalize(x)),
    "ends_with": lambda a, x: normalize(a).endswith(normalize(x)),
    "contains": lambda a, x: contains(a, x),
    "not_contains": lambda a, x: not contains(a, x),
    "max_words": lambda a, x: 0 < len(a.split()) <= int(x),
    "bullets": lambda a, x: len(_BULLET.findall(a)) >= 2,
    "numbered": lambda a, x: len(_NUMBERED.findall(a)) >= 2,
    "no_exclamation": lambda a, x: bool(a) and "!" not in a,
}


def style_score(answer: str, rules: Sequence[str]) -> float:
    """The share of `rules` the answer follows."""
    parsed = [parse_rule(r) for r in rules]
    return sum(r.check(answer) for r in parsed) / len(parsed) if parsed else 0.0


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int


def bootstrap(values: Sequence[float], *, seed: int, resamples: int = 1000, level: float = 0.95) -> Estimate:
    """The mean with a percentile bootstrap interval (seeded, so a report is reproducible)."""
    if not values:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Estimate(mean, mean, mean, 1)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(statistics.fmean(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1 - level) / 2
    low = means[int(tail * (resamples - 1))]
    high = means[round((1 - tail) * (resamples - 1))]
    return Estimate(mean, min(low, mean), max(high, mean), n)
