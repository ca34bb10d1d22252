"""Chunks fit the model, overlap, keep their heading, and lose no text (the real tokenizer)."""

from __future__ import annotations

import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from loraswarm.services.ingestion.chunking import chunk_sections, count_tokens, split_section
from loraswarm.services.ingestion.parsing import Section
from loraswarm.shared.embeddings import SentenceEmbedder

WORDS = st.sampled_from(
    [
        "refund",
        "tent",
        "warranty",
        "Reno",
        "shipping",
        "parcel",
        "60",
        "days",
        "DHL",
        "zipper",
        "unbelievably",
        "photosynthesis",
        "café",
        "naïve",
        "E-217",
        "TR-4410",
        "co-op",
        "don't",
        "a",
        "I",
    ]
)
SENTENCES = st.lists(WORDS, min_size=1, max_size=25).map(lambda ws: " ".join(ws) + ".")
PARAGRAPHS = st.lists(SENTENCES, min_size=1, max_size=8).map(" ".join)
BODIES = st.lists(PARAGRAPHS, min_size=1, max_size=6).map("\n\n".join)
HEADINGS = st.one_of(st.just(""), st.lists(WORDS, min_size=1, max_size=6).map(" ".join))


def words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


@settings(max_examples=100)
@given(
    heading=HEADINGS,
    body=BODIES,
    max_tokens=st.integers(min_value=16, max_value=160),
    overlap=st.integers(min_value=0, max_value=40),
)
def test_a_section_splits_into_chunks_that_fit_and_cover_it(
    embedder: SentenceEmbedder, heading: str, body: str, max_tokens: int, overlap: int
) -> None:
    tok = embedder.tokenizer
    chunks = split_section(tok, Section(heading, body), max_tokens, overlap)
    assert chunks
    covered: list[str] = []
    for chunk in chunks:
        assert count_tokens(tok, chunk.text) <= max_tokens
        assert chunk.tokens == count_tokens(tok, chunk.text)
        if heading:
            assert chunk.text.startswith(chunk.heading + "\n")
            covered += words(chunk.text[len(chunk.heading) + 1 :])
        else:
            covered += words(chunk.text)
    # Every word of the body, in order, is in some chunk (overlap repeats some).
    position = 0
    for word in words(body):
        while position < len(covered) and covered[position] != word:
            position += 1
        assert position < len(covered), f"lost {word!r}"


def test_long_sections_overlap_and_end_at_sentences(embedder: SentenceEmbedder) -> None:
    sentences = [f"Sentence number {i} talks about refunds and parcels." for i in range(40)]
    chunks = split_section(embedder.tokenizer, Section("Policies > Refunds", " ".join(sentences)), 64, 16)
    assert len(chunks) > 3
    for first, second in itertools.pairwise(chunks):
        tail = first.text.split("\n", 1)[1]
        head = second.text.split("\n", 1)[1]
        assert tail.endswith("."), "a window should end at a sentence end"
        assert words(head)[0] in words(tail)[-20:], "consecutive chunks should overlap"
        assert second.heading == "Policies > Refunds"


def test_short_sections_are_packed_with_their_headings(embedder: SentenceEmbedder) -> None:
    sections = [Section(f"FAQ > Q{i}", f"Answer {i}.") for i in range(5)]
    (chunk,) = chunk_sections(embedder.tokenizer, sections, 128, 16)
    assert chunk.heading == "FAQ > Q0"
    assert all(f"FAQ > Q{i}\nAnswer {i}." in chunk.text for i in range(5))
    many = chunk_sections(embedder.tokenizer, sections, 16, 0)
    assert len(many) > 1 and all(count_tokens(embedder.tokenizer, c.text) <= 16 for c in many)


def test_query_path_gives_the_same_vectors_as_the_batch_path(embedder: SentenceEmbedder) -> None:
    texts = ["refund within 60 days", "tent pole snapped"]
    batch, queries = embedder.encode(texts), embedder.encode_queries(texts)
    assert batch.shape == queries.shape == (2, embedder.dimensions)
    assert abs(float((batch * queries).sum(axis=1).min()) - 1.0) < 1e-4
