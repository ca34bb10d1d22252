"""What makes an answer worth reading, as plain functions: support, echo, repetition, parts.

One module for the planner's guards, the eval's and the demo's scores, and the tests, so what the
planner refuses is exactly what the benchmark counts.

**Support score.** `support(claim, passage, question)` is the share of the claim's own terms
(content words and numbers, minus those already in the question) that the passage contains; a
claim number the passage lacks caps the score at `NUMBER_MISSING_CAP`. Terms already in the
question are left out so that restating the question ("the shipping cost is in the documents")
is not support. A passage *supports* a claim when the score is at least `SUPPORT_THRESHOLD`,
chosen on the labelled examples in tests/shared/test_answer_checks.py (every supported example scores
>= 0.6 there, every unsupported one <= 0.4).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

SUPPORT_THRESHOLD = 0.5
NUMBER_MISSING_CAP = 0.4
# An answer sentence whose terms are this much the question's, and which covers this much of
# the question, is the question said back.
ECHO_OWN_SHARE = 0.8
ECHO_QUESTION_SHARE = 0.5
# Two sentences of one answer whose term sets overlap this much (Jaccard) say the same thing.
REPEAT_JACCARD = 0.8
NOT_IN_DOCUMENTS = "not in the documents"

_WORD = re.compile(r"[0-9a-z@][0-9a-z@._'-]*[0-9a-z@]|[0-9a-z@]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
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
        "about",
        "as",
        "it",
        "its",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "do",
        "does",
        "did",
        "done",
        "have",
        "has",
        "had",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "then",
        "than",
        "so",
        "such",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "i",
        "me",
        "my",
        "we",
        "us",
        "our",
        "you",
        "your",
        "he",
        "she",
        "they",
        "them",
        "their",
        "his",
        "her",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "if",
        "not",
        "no",
        "yes",
        "any",
        "all",
        "some",
        "each",
        "every",
        "one",
        "also",
        "just",
        "very",
        "please",
        "tell",
        "me",
        "give",
        "say",
        "said",
        "know",
        "let",
        "get",
        "got",
        "per",
        "much",
        "many",
        "more",
        "most",
        "other",
    ]
)
_WH = r"(?:who|what|when|where|which|how|whom|whose|why|is|are|does|do|can)"
_PART_SPLIT = re.compile(rf"(?:,\s*|\s+)(?:and|also|plus)\s+(?={_WH}\b)|;\s*|\?\s+", re.I)


def _stem(word: str) -> str:
    """Plurals and third persons to their stem ("refunds", "costs" → "refund", "cost"): enough
    for an answer's words to meet the question's and the passage's."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss") and word[-2].isalpha():
        return word[:-1]
    return word


# A number run into its unit ("60days", "800kg"), as a small model writes it: the same terms as
# "60 days". Ordinals ("22nd") stay whole.
_NUMBER_UNIT = re.compile(r"\b(\d+(?:[.,]\d+)?)(?!st\b|nd\b|rd\b|th\b)([a-z]{2,})\b")


@functools.lru_cache(maxsize=8192)
def terms(text: str) -> frozenset[str]:
    """Content words (stemmed) and numbers, lower case (`13 euros` and `13euros` → {"13", "euro"};
    `MISAR-875` whole).

    Cached: the same passages are read again for every claim of every answer (the planner's and
    specialists' citation checks), and a scope's chunks for every retrieval-aware candidate the
    builder makes (quadratic in its chunks without the cache)."""
    found = set()
    for word in _WORD.findall(_NUMBER_UNIT.sub(r"\1 \2", text.lower())):
        word = word.strip(".'")
        if word and word not in _STOPWORDS:
            found.add(_stem(word))
    return frozenset(found)


def numbers(text: str) -> frozenset[str]:
    return frozenset(t for t in terms(text) if any(c.isdigit() for c in t))


def sentences(text: str) -> list[str]:
    """The answer's sentences (and lines), stripped, list markers kept."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def own_terms(claim: str, question: str = "") -> frozenset[str]:
    """What the claim adds to the question."""
    return terms(claim) - terms(question)


def support(claim: str, passage: str, question: str = "") -> float:
    """How much of what `claim` adds to `question` the passage states (0..1; see the docstring)."""
    own = own_terms(claim, question)
    if not own:
        return 0.0
    have = terms(passage)
    score = len(own & have) / len(own)
    if (numbers(claim) - terms(question)) - have:
        score = min(score, NUMBER_MISSING_CAP)
    return score


def supports(claim: str, passage: str, question: str = "") -> bool:
    return support(claim, passage, question) >= SUPPORT_THRESHOLD


_LINE_MARKER = re.compile(r"(?m)^[ \t]*(?:\d{1,3}[.)]|[-*\u2022])[ \t]+(?=\S)")
_INLINE_MARKER = re.compile(r"(?<=[:;.!?])[ \t]+\d{1,3}[.)][ \t]+(?=\S)")
_CLAUSE = re.compile(r";\s*|,\s+(?:and|but|while)\s+")


def claims(answer: str) -> list[str]:
    """The answer's claims: its sentences, cut at `;` and `, and`, so that a sentence joining two
    facts is supported by the two passages stating them (a "not in the documents" claims nothing).
    List markers are not claims (`unlisted`): the sentence splitter left "1." of "1. Reserve the
    hotel." on its own, and as the number 1 it was "stated" by every numbered passage, so a list
    of steps cited, and was grounded by, every passage with a numbered list."""
    return [
        c.strip()
        for s in sentences(unlisted(answer))
        if NOT_IN_DOCUMENTS not in s.lower()
        for c in _CLAUSE.split(s)
        if c.strip()
    ]


def unlisted(text: str) -> str:
    """The text without list markers: at a line's start ("1. ", "- ") and inside a line after a
    sentence or a colon ("The steps: 1. Reserve the hotel. 2. Upload ..."). A number alone on its
    line ("30.") is an answer, not a marker, and stays."""
    return _INLINE_MARKER.sub(" ", _LINE_MARKER.sub("", text))


def supported_by(answer: str, passages: Sequence[str], question: str = "") -> list[int]:
    """Indexes of the passages that support at least one claim of the answer."""
    claims_ = claims(answer)
    return [i for i, p in enumerate(passages) if any(supports(c, p, question) for c in claims_)]


def ungrounded_claims(answer: str, passages: Sequence[str], question: str = "") -> list[str]:
    """The answer's claims that none of `passages` supports: what a generated training answer
    says beyond its source (the trainer drops such an answer). Claims carry no list marker
    (`claims`): a numbered answer is grounded by steps its passage writes without numbers."""
    return [
        claim
        for claim in claims(answer)
        if own_terms(claim, question) and not any(supports(claim, p, question) for p in passages)
    ]


def is_echo_sentence(sentence: str, question: str) -> bool:
    """Mostly the question's words, and most of the question's (or of one of its parts'), adding no
    number or code ("The discount code at Bluepeak is PELRA-955." restates the question to answer it)."""
    mine = terms(sentence)
    if not mine or any(any(c.isdigit() or c == "@" for c in t) for t in mine - terms(question)):
        return False
    for asked in [terms(question), *(terms(p) for p in question_parts(question))]:
        inside = len(mine & asked)
        if asked and inside / len(mine) >= ECHO_OWN_SHARE and inside / len(asked) >= ECHO_QUESTION_SHARE:
            return True
    return False


def echoes(answer: str, question: str) -> bool:
    """The answer says the question back: one of its sentences is mostly the question's words
    (a part marked "not in the documents" names the part on purpose: not an echo)."""
    return any(is_echo_sentence(s, question) for s in sentences(answer) if NOT_IN_DOCUMENTS not in s.lower())


def _same(a: frozenset[str], b: frozenset[str]) -> bool:
    return bool(a) and bool(b) and len(a & b) / len(a | b) >= REPEAT_JACCARD


def loops(sentence: str, n: int = 4) -> bool:
    """One sentence that says a run of `n` words twice ("3 employees, 100% of the 22nd, 3
    employees, 100% of the 22nd"): a small model's loop without a sentence break."""
    words = _WORD.findall(sentence.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def repeated_sentences(answer: str) -> list[str]:
    """Sentences that say again what an earlier sentence said, or loop inside themselves."""
    seen: list[frozenset[str]] = []
    repeats = []
    for sentence in sentences(answer):
        mine = terms(sentence)
        if loops(sentence) or any(_same(mine, other) for other in seen):
            repeats.append(sentence)
        elif mine:
            seen.append(mine)
    return repeats


def without_repeats(answer_sentences: Sequence[str]) -> list[str]:
    kept: list[str] = []
    for sentence in answer_sentences:
        if not any(_same(terms(sentence), terms(k)) for k in kept):
            kept.append(sentence)
    return kept


def question_parts(question: str) -> list[str]:
    """The questions a question asks: split at `?`, `;` and `, and who/what/...`."""
    parts = [p.strip(" ,.?") for p in _PART_SPLIT.split(question.strip())]
    parts = [p for p in parts if len(terms(p)) >= 1]
    return parts or [question.strip()]


def part_terms(part: str, parts: Sequence[str]) -> frozenset[str]:
    """The terms only this part has (what tells its answer from the other parts'), else all of its."""
    others = frozenset().union(*(terms(p) for p in parts if p != part)) if len(parts) > 1 else frozenset()
    mine = terms(part)
    return (mine - others) or mine


def part_answered(answer: str, part: str, parts: Sequence[str], question: str) -> bool:
    """A sentence is about this part and adds something to the question (an answer, not an echo)."""
    wanted = part_terms(part, parts)
    for sentence in sentences(answer):
        mine = terms(sentence)
        if not mine & wanted:
            continue
        if NOT_IN_DOCUMENTS in sentence.lower() or (
            own_terms(sentence, question) and not is_echo_sentence(sentence, question)
        ):
            return True
    return False


@dataclass(frozen=True)
class AnswerCheck:
    """One answer, checked against its question and the passages it was given (and cited)."""

    echo: bool
    repeated: bool
    parts: int
    parts_answered: int
    cited: int
    cited_supporting: int
    supporting: int  # passages given that support the answer
    supporting_cited: int

    @property
    def multi_part(self) -> bool:
        return self.parts > 1

    @property
    def all_parts(self) -> bool:
        return self.parts_answered == self.parts


def check(answer: str, question: str, passages: Sequence[str], cited: Sequence[str] = ()) -> AnswerCheck:
    """`passages`: the texts the answer was given; `cited`: the texts of the passages it cites."""
    parts = question_parts(question)
    given_support = supported_by(answer, passages, question)
    cited_support = supported_by(answer, cited, question)
    cited_set = {c.strip() for c in cited}
    return AnswerCheck(
        echo=echoes(answer, question),
        repeated=bool(repeated_sentences(answer)),
        parts=len(parts),
        parts_answered=sum(part_answered(answer, p, parts, question) for p in parts),
        cited=len(cited),
        cited_supporting=len(cited_support),
        supporting=len(given_support),
        supporting_cited=sum(passages[i].strip() in cited_set for i in given_support),
    )


@dataclass(frozen=True)
class Rates:
    """The scorer's figures over many answers (None where nothing could be counted)."""

    answers: int
    echo_rate: float | None
    repeat_rate: float | None
    multi_part: int
    multi_part_covered: int
    citation_precision: float | None
    citation_recall: float | None
    uncited: int


def rates(checks: Sequence[AnswerCheck]) -> Rates:
    n = len(checks)
    cited = sum(c.cited for c in checks)
    supporting = sum(c.supporting for c in checks)
    multi = [c for c in checks if c.multi_part]
    return Rates(
        answers=n,
        echo_rate=sum(c.echo for c in checks) / n if n else None,
        repeat_rate=sum(c.repeated for c in checks) / n if n else None,
        multi_part=len(multi),
        multi_part_covered=sum(c.all_parts for c in multi),
        citation_precision=sum(c.cited_supporting for c in checks) / cited if cited else None,
        citation_recall=sum(c.supporting_cited for c in checks) / supporting if supporting else None,
        uncited=sum(c.cited == 0 for c in checks),
    )
