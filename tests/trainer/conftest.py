"""Real parts for trainer tests: the pulled base model (loaded once), the local Weaviate fed by the
real ingestion pipeline, tenant files on disk. Each test gets its own data folder and collection.

Training settings are shrunk so that a job takes seconds on a CPU: short sequences, few steps,
63 reference canaries (so the highest measurable exposure is 6 bits), and no retrieval-aware
examples (each carries passages, up to 768 tokens: they made the leakage gate's jobs several times
longer; the builder's tests and the quick eval train on them).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from loraswarm.infra import weaviate as local_weaviate
from loraswarm.services.ingestion.pipeline import Indexer
from loraswarm.services.trainer.pipeline import BaseModels, Trainer
from loraswarm.services.trainer.scope import Scope, TenantFiles
from loraswarm.shared import vectorstore
from loraswarm.shared.adapter_store import AdapterManifest
from loraswarm.shared.embeddings import load_embedder
from loraswarm.shared.events import Document
from loraswarm.shared.settings import Settings
from tests.conftest import isolated_settings


def small(settings: Settings) -> Settings:
    t = settings.trainer
    t.min_train_tokens = 64
    t.reference_canaries = 63
    t.eval_batch_tokens = 1024
    t.progress_every = 2
    t.builder.raft_per_chunk = 0
    t.builder.raft_style = 0
    d = t.defaults
    d.steps = 6
    d.batch_size = 4
    d.seq_len = 64
    d.learning_rate = 3e-3
    d.warmup_steps = 0
    d.canaries = 0
    return settings


@pytest.fixture
def trainer_settings(tmp_path: Path) -> Settings:
    settings = small(isolated_settings("memory", tmp_path))
    settings.orchestration.tenants_dir = tmp_path / "tenants-config"
    settings.retrieval.collection = f"Trainer{uuid.uuid4().hex[:12]}"
    return settings


@pytest.fixture(scope="session")
def base_models() -> BaseModels:
    """The base model, loaded once for the session; every job trains on a copy."""
    base = BaseModels(Settings(device="cpu"))
    base.get()
    return base


@pytest.fixture
def trainer(trainer_settings: Settings, base_models: BaseModels) -> Trainer:
    return Trainer(trainer_settings, base=base_models)


def extra(manifest: AdapterManifest) -> dict[str, Any]:
    """What the trainer adds to a manifest beyond its declared fields (loss curve, leakage report)."""
    return manifest.model_extra or {}


def write_examples(files: TenantFiles, scope: Scope, name: str, records: Sequence[Any]) -> str:
    """A JSONL file in the scope's own folder; the path a request names it by."""
    folder = files.folder(scope)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    (folder / name).write_text("\n".join(lines) + "\n")
    return name


def refund_examples(company: str, days: int, n: int = 16) -> list[dict[str, Any]]:
    """Chat pairs teaching one made-up fact the base model cannot know."""
    questions = [
        "What is the refund window?",
        "How long do I have to return an order?",
        "Can I still get my money back?",
        "What is your return policy?",
    ]
    return [
        {
            "messages": [
                {"role": "user", "content": f"{questions[i % len(questions)]} (order {1000 + i})"},
                {
                    "role": "assistant",
                    "content": f"{company} refunds every order within {days} days of delivery, no questions asked.",
                },
            ]
        }
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def weaviate_ready() -> None:
    """The real local Weaviate (started if it is not running)."""
    local_weaviate.up(Settings().infra)


@pytest.fixture
def ingest(trainer_settings: Settings, weaviate_ready: None) -> Iterator[Any]:
    """Index documents into a tenant's shard with the real ingestion pipeline (own collection)."""
    store = vectorstore.shared_store(trainer_settings)
    indexer = Indexer(store, load_embedder(trainer_settings), trainer_settings.retrieval)

    def index(tenant: str, documents: list[Document]) -> None:
        report = indexer.index(tenant, documents)
        assert not report.failures, report.failures

    yield index
    store.client.collections.delete(trainer_settings.retrieval.collection)


def document(doc_id: str, text: str, visibility: str = "company") -> Document:
    return Document(doc_id=doc_id, source="handbook", title=doc_id, visibility=visibility, content=text)
