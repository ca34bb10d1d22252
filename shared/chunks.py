"""What one stored chunk is: its record, its deterministic object id, who may see it.

The vector store (`vectorstore.py`) writes and reads these; ingestion builds them, the trainer
and the retriever read them. Kept apart so that a caller holding chunks needs no Weaviate client.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Visibility = str  # "company" or "user:<id>"
COMPANY = "company"

# A fixed namespace: the same chunk gets the same object id on every machine and every run.
_CHUNK_NAMESPACE = uuid.UUID("0b8c3f4e-5a27-4f59-9d1e-6c0a7a3e2b41")


def user_visibility(user_id: str) -> Visibility:
    return f"user:{user_id}"


def chunk_uuid(tenant_id: str, doc_id: str, position: int) -> uuid.UUID:
    """The object id of a chunk: the same input always gives the same id."""
    return uuid.uuid5(_CHUNK_NAMESPACE, f"{tenant_id}\x1f{doc_id}\x1f{position}")


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk as stored: its text, where it came from, who may see it."""

    doc_id: str  # the document (or record) the chunk belongs to
    parent_id: str  # the submitted document; a CSV/JSON file's records share it
    source: str
    title: str
    visibility: Visibility
    heading: str
    text: str
    position: int  # index of the chunk inside `doc_id`
    version: str  # content hash of the submitted document it was cut from
    media_type: str = "text/plain"
    metadata: dict[str, Any] = field(default_factory=dict)

    def properties(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "doc_id": self.doc_id,
            "parent_id": self.parent_id,
            "source": self.source,
            "title": self.title,
            "heading": self.heading,
            "visibility": self.visibility,
            "position": self.position,
            "version": self.version,
            "media_type": self.media_type,
            "metadata": json.dumps(self.metadata, default=str, sort_keys=True),
            "indexed_at": datetime.now(UTC),
        }

    @classmethod
    def from_properties(cls, props: dict[str, Any]) -> ChunkRecord:
        try:
            metadata = json.loads(props.get("metadata") or "{}")
        except ValueError:
            metadata = {}
        return cls(
            doc_id=str(props.get("doc_id", "")),
            parent_id=str(props.get("parent_id", "")),
            source=str(props.get("source", "")),
            title=str(props.get("title") or ""),
            visibility=str(props.get("visibility", COMPANY)),
            heading=str(props.get("heading") or ""),
            text=str(props.get("text") or ""),
            position=int(props.get("position") or 0),
            version=str(props.get("version") or ""),
            media_type=str(props.get("media_type") or "text/plain"),
            metadata=metadata if isinstance(metadata, dict) else {},
        )


@dataclass(frozen=True)
class Hit:
    chunk: ChunkRecord
    score: float


# ---------------------------------------------------------------- in Weaviate

# Properties returned with every read (the vector is not: callers never need it back).
RETURNED_PROPERTIES = [
    "text",
    "doc_id",
    "parent_id",
    "source",
    "title",
    "heading",
    "visibility",
    "position",
    "version",
    "media_type",
    "metadata",
]


def weaviate_properties() -> list[Any]:
    """The chunk collection's properties (the vector store creates the collection with them)."""
    from weaviate.classes.config import DataType, Property, Tokenization

    def keyword(name: str) -> Any:
        # Whole-value matching for filters; not part of BM25.
        return Property(
            name=name,
            data_type=DataType.TEXT,
            tokenization=Tokenization.FIELD,
            index_searchable=False,
            index_filterable=True,
        )

    return [
        Property(name="text", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
        Property(name="title", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
        Property(name="heading", data_type=DataType.TEXT, index_searchable=False, index_filterable=False),
        keyword("doc_id"),
        keyword("parent_id"),
        keyword("source"),
        keyword("visibility"),
        keyword("version"),
        keyword("media_type"),
        Property(name="position", data_type=DataType.INT),
        Property(name="metadata", data_type=DataType.TEXT, index_searchable=False, index_filterable=False),
        Property(name="indexed_at", data_type=DataType.DATE),
    ]
