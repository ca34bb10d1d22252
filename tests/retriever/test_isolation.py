"""Tenant and user isolation on the real Weaviate, for random queries (property-based).

Three companies hold look-alike documents (the same words, each with its own codeword), and two
users of each hold private notes. Whatever the query, k, alpha or source filter: no passage comes
from another company's shard, and no private chunk reaches anyone but its owner. The same holds
for the library API the planner, specialists and trainer call.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraswarm.services.ingestion.pipeline import Indexer
from loraswarm.shared import retrieval
from loraswarm.shared.embeddings import SentenceEmbedder
from loraswarm.shared.events import Passage
from loraswarm.shared.retrieval import Retriever
from loraswarm.shared.settings import Settings
from loraswarm.shared.vectorstore import VectorStore
from tests.ingestion.conftest import unique_collection
from tests.ingestion.samples import doc

TENANTS = ("acme", "globex", "initech")
USERS = ("ada", "bo")
CODEWORD = {"acme": "zebracode", "globex": "lynxcode", "initech": "otterkey"}
TOPICS = {
    "refunds": "Refunds are paid within 30 days; the refund desk answers by email.",
    "launch": "The spring launch plan moves the tent line to recycled fabric.",
    "salaries": "Salary bands are reviewed each January by the people team.",
}
VOCABULARY = sorted(
    {w.strip(".;,").lower() for text in TOPICS.values() for w in text.split()}
    | set(CODEWORD.values())
    | {"private", "note", "performance", "review", "secret", *USERS}
)


def corpus(tenant: str) -> list[tuple[str, str, str, str]]:
    """(doc_id, source, visibility, text) of one tenant: company pages and private notes."""
    docs = [
        (f"{tenant}/{topic}.md", "wiki", "company", f"# {topic}\n\n{text} Codeword {CODEWORD[tenant]}.")
        for topic, text in TOPICS.items()
    ]
    docs.append((f"{tenant}/crm.txt", "crm", "company", f"Customer notes of {tenant}: refunds and launch."))
    for user in USERS:
        docs.append(
            (
                f"{tenant}/private-{user}/review.txt",
                "notes",
                f"user:{user}",
                f"Private note of {user}: my performance review and salary, secret {CODEWORD[tenant]}.",
            )
        )
    return docs


@pytest.fixture(scope="module")
def three_tenants(weaviate_ready: None, embedder: SentenceEmbedder) -> Iterator[Retriever]:
    name = unique_collection()
    store = VectorStore.open(Settings(), name)
    indexer = Indexer(store, embedder, Settings().retrieval)
    for tenant in TENANTS:
        report = indexer.index(
            tenant,
            [doc(d, text, source=s, visibility=v) for d, s, v, text in corpus(tenant)],
        )
        assert not report.failures
    yield Retriever(store, embedder, Settings().retrieval)
    store.client.collections.delete(name)
    store.close()


def assert_allowed(passages: list[Passage], tenant: str, user: str | None, sources: list[str]) -> None:
    for p in passages:
        doc_id = p.citation.doc_id
        assert doc_id.startswith(f"{tenant}/"), f"{doc_id} reached {tenant}"
        if "/private-" in doc_id:
            assert user is not None and doc_id.startswith(f"{tenant}/private-{user}/"), (
                f"{doc_id} reached user {user!r}"
            )
        if sources:
            assert p.citation.source in sources


QUERIES = st.one_of(
    st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=8).map(" ".join),
    st.text(min_size=1, max_size=40),
)


@settings(max_examples=40)
@given(
    tenant=st.sampled_from(TENANTS),
    user=st.sampled_from([None, *USERS, "eve"]),
    query=QUERIES,
    k=st.integers(min_value=1, max_value=30),
    alpha=st.floats(min_value=0.0, max_value=1.0),
    sources=st.lists(st.sampled_from(["wiki", "crm", "notes", "nowhere"]), max_size=2, unique=True),
)
def test_random_queries_never_cross_tenants_or_users(
    three_tenants: Retriever,
    tenant: str,
    user: str | None,
    query: str,
    k: int,
    alpha: float,
    sources: list[str],
) -> None:
    passages = three_tenants.search(tenant, query, user_id=user, k=k, alpha=alpha, sources=sources)
    assert len(passages) <= k
    assert_allowed(passages, tenant, user, sources)


@pytest.mark.parametrize("tenant", TENANTS)
def test_the_test_can_see_a_leak_if_there_were_one(three_tenants: Retriever, tenant: str) -> None:
    """Owners do get their private note and every company page: the filters are not just empty."""
    mine = three_tenants.search(tenant, f"secret {CODEWORD[tenant]} performance review", user_id="ada", k=10)
    assert f"{tenant}/private-ada/review.txt" in {p.citation.doc_id for p in mine}
    everything = three_tenants.search(tenant, "refunds launch salary codeword", k=30, alpha=0.0)
    assert {p.citation.doc_id for p in everything} == {f"{tenant}/{t}.md" for t in TOPICS} | {
        f"{tenant}/crm.txt"
    }
    for other in TENANTS:
        if other != tenant:
            leaked = three_tenants.search(tenant, f"secret {CODEWORD[other]}", user_id="bo", k=30)
            assert_allowed(leaked, tenant, "bo", [])


def test_library_api_search_and_training_scopes(three_tenants: Retriever) -> None:
    settings = Settings()
    settings.retrieval.collection = three_tenants.store.name
    passages = retrieval.search(settings, "globex", "bo", "performance review secret", k=10)
    assert "globex/private-bo/review.txt" in {p.citation.doc_id for p in passages}
    assert_allowed(passages, "globex", "bo", [])

    company = list(retrieval.chunks_in_scope(settings, "globex"))
    assert {c.doc_id for c in company} == {f"globex/{t}.md" for t in TOPICS} | {"globex/crm.txt"}
    ada = list(retrieval.chunks_in_scope(settings, "globex", "ada"))
    assert [c.doc_id for c in ada] == ["globex/private-ada/review.txt"]
    assert list(retrieval.chunks_in_scope(settings, "globex", "ada", sources=["wiki"])) == []
    assert list(retrieval.chunks_in_scope(settings, f"nobody-{uuid.uuid4().hex[:6]}")) == []
