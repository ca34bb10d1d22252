"""Chunks for builder tests, made by ingestion's own parser and chunker (with the embedding
model's real tokenizer), exactly as the trainer later reads them from the vector store."""

from __future__ import annotations

from functools import cache
from typing import Any

from transformers import AutoTokenizer

from loraswarm.services.ingestion.chunking import chunk_sections
from loraswarm.services.ingestion.parsing import parse
from loraswarm.services.trainer.corpus import CorpusChunk
from loraswarm.shared.embeddings import model_path
from loraswarm.shared.events import Document
from loraswarm.shared.settings import Settings


@cache
def embedding_tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(model_path(Settings().retrieval.embedding_model))


def chunks_of(document: Document) -> list[CorpusChunk]:
    """What ingestion would index for `document` (Indexer.prepare's parse and chunk steps)."""
    retrieval = Settings().retrieval
    parsed, failed = parse(document, retrieval)
    assert not failed, failed
    out = []
    for unit in parsed:
        pieces = chunk_sections(
            embedding_tokenizer(), unit.sections, retrieval.chunk_tokens, retrieval.chunk_overlap
        )
        out += [CorpusChunk(unit.doc_id, i, "v1", document.visibility, c.text) for i, c in enumerate(pieces)]
    return out


def doc(
    doc_id: str, text: str, *, visibility: str = "company", media_type: str = "text/markdown"
) -> Document:
    return Document(
        doc_id=doc_id, source="handbook", visibility=visibility, media_type=media_type, content=text
    )


POLICIES = """# Larkspur policies

- Larkspur accepts refunds within 45 days of purchase.
- Standard shipping at Larkspur costs 17 euros.
- The staff discount code at Larkspur is KELMAR-204.
- Odile Fenwen leads the finance team at Larkspur.
- The head office of Larkspur is in Trieste.

Support: help@larkspur.example
"""

PROCESSES = """# Larkspur processes

## Booking travel

1. Ask the manager.
2. Compare three fares.
3. Book through the portal.
4. Upload the receipts.
"""

STYLE = """# How Larkspur writes to customers

Start every reply with "Good day from Larkspur".
End every reply with "The Larkspur Wen team".
Never use the word "basically".
Keep every reply under 60 words.
"""


def company_corpus() -> list[CorpusChunk]:
    return [
        *chunks_of(doc("larkspur/policies.md", POLICIES)),
        *chunks_of(doc("larkspur/processes.md", PROCESSES)),
        *chunks_of(doc("larkspur/style-guide.md", STYLE)),
    ]
