"""Token-aware chunking with overlap that keeps each chunk's heading.

Sizes are counted with the embedding model's own tokenizer, so no chunk is cut short by the
model. Every chunk starts with its heading path ("Handbook > Refunds"), so a passage read on its
own — by BM25, by the embedding model, by an LLM — still says what it is about.

A section longer than a chunk is cut into windows of `budget` tokens that overlap by `overlap`
tokens; a window ends at a paragraph or sentence end when one lies in its last half. Short
neighbouring sections are packed into one chunk instead of making many tiny ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from loraswarm.services.ingestion.parsing import Section
from loraswarm.shared.embeddings import Tokenizer

_SENTENCE_END = re.compile(r"[.!?;:]['\")\]]*$")


@dataclass(frozen=True)
class Chunk:
    heading: str
    text: str  # heading line + body; what is embedded, searched and returned
    tokens: int


def count_tokens(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _offsets(tokenizer: Tokenizer, text: str) -> list[tuple[int, int]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [(int(a), int(b)) for a, b in enc["offset_mapping"]]


def _break_at(text: str, offsets: Sequence[tuple[int, int]], start: int, end: int) -> int:
    """The best token index in (start + half, end] to end a window before: paragraph, sentence, line."""
    floor = start + max(1, (end - start) // 2)
    best_sentence = best_line = None
    for j in range(end, floor, -1):
        gap = text[offsets[j - 1][1] : offsets[j][0]] if j < len(offsets) else "\n\n"
        if "\n\n" in gap:
            return j
        if (
            best_sentence is None
            and gap
            and _SENTENCE_END.search(text[offsets[j - 1][0] : offsets[j - 1][1]])
        ):
            best_sentence = j
        if best_line is None and "\n" in gap:
            best_line = j
    return best_sentence or best_line or end


def _joined(offsets: Sequence[tuple[int, int]], j: int) -> bool:
    """Token j continues the word of token j-1 (`##ing`, or punctuation stuck to it)."""
    return 0 < j < len(offsets) and offsets[j][0] == offsets[j - 1][1]


def _word_start(offsets: Sequence[tuple[int, int]], j: int, limit: int) -> int:
    """Move j forward to a token that starts a word, without passing `limit`."""
    while j < limit and _joined(offsets, j):
        j += 1
    return j


def _word_end(offsets: Sequence[tuple[int, int]], start: int, end: int) -> int:
    """Move a window's end back so it does not cut a word in two (unless the word fills it)."""
    j = end
    while j > start + 1 and _joined(offsets, j):
        j -= 1
    return j if not _joined(offsets, j) else end


def split_section(tokenizer: Tokenizer, section: Section, max_tokens: int, overlap: int) -> list[Chunk]:
    """One section as chunks of at most `max_tokens` tokens (heading line included)."""
    heading = section.heading
    heading_tokens = count_tokens(tokenizer, heading) if heading else 0
    if heading_tokens > max_tokens // 4:  # a runaway heading must not crowd out the text
        cut = _offsets(tokenizer, heading)[max_tokens // 4 - 1][1]
        heading = heading[:cut] + "…"
        heading_tokens = count_tokens(tokenizer, heading)
    budget = max(1, max_tokens - heading_tokens - (1 if heading else 0))
    body = section.text
    offsets = _offsets(tokenizer, body)
    prefix = f"{heading}\n" if heading else ""
    if not offsets:
        return []
    step_back = min(overlap, budget // 2)
    chunks: list[Chunk] = []
    start = 0
    while start < len(offsets):
        end = min(start + budget, len(offsets))
        if end < len(offsets):
            end = _word_end(offsets, start, _break_at(body, offsets, start, end))
        # Text cut out of a longer text can tokenize differently; the limit is checked on the
        # very text that will be embedded, and the window shrinks until it holds.
        while True:
            text = prefix + body[offsets[start][0] : offsets[end - 1][1]].strip()
            tokens = count_tokens(tokenizer, text)
            if tokens <= max_tokens or end - start <= 1:
                break
            end -= 1
        chunks.append(Chunk(heading, text, tokens))
        if end >= len(offsets):
            break
        start = _word_start(offsets, max(end - step_back, start + 1), end)
    return chunks


def chunk_sections(
    tokenizer: Tokenizer, sections: Sequence[Section], max_tokens: int, overlap: int
) -> list[Chunk]:
    """Chunks of a document, in reading order: long sections split, short neighbours packed."""
    chunks: list[Chunk] = []
    packed: list[Chunk] = []

    def flush() -> None:
        if not packed:
            return
        if len(packed) == 1:
            chunks.append(packed[0])
        else:
            # Keep each section's heading line; the first heading names the whole chunk.
            text = "\n\n".join(c.text for c in packed)
            chunks.append(Chunk(packed[0].heading, text, count_tokens(tokenizer, text)))
        packed.clear()

    for section in sections:
        pieces = split_section(tokenizer, section, max_tokens, overlap)
        if len(pieces) != 1:
            flush()
            chunks.extend(pieces)
            continue
        piece = pieces[0]
        if packed and (
            sum(c.tokens for c in packed) + piece.tokens > max_tokens
            or count_tokens(tokenizer, "\n\n".join([*(c.text for c in packed), piece.text])) > max_tokens
        ):
            flush()
        packed.append(piece)
    flush()
    return chunks
