"""The product's main job end to end, on real Kafka, Weaviate and the model server.

A request per tenant (and per user) comes back with citations from that tenant's documents only,
and the specialists ran with that tenant's (and that user's) adapters.
"""

from __future__ import annotations

from pathlib import Path

from loraswarm.services.planner.extract import UNSUPPORTED_NOTE
from loraswarm.shared.events import RecommendationCompleted, RecommendationRequested
from loraswarm.shared.settings import Settings
from tests.conftest import isolated_settings
from tests.e2e.world import TENANT_DOCS, outcomes_of, swarm


async def test_each_tenant_gets_its_own_documents_and_adapters(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings: Settings = isolated_settings("kafka", tmp_path, kafka_bootstrap)
    requests = [
        RecommendationRequested(
            tenant_id="acme", user_id="ana", question="Can a tent be refunded?", deadline_s=240
        ),
        RecommendationRequested(tenant_id="globex", question="Can a turbine be returned?", deadline_s=240),
    ]
    async with swarm(settings, tmp_path):
        outcomes = await outcomes_of(settings, requests)

    for request in requests:
        outcome = outcomes[str(request.request_id)]
        assert isinstance(outcome, RecommendationCompleted), outcome
        own_docs = {d for d, _, _ in TENANT_DOCS[request.tenant_id]}
        given = {p.citation.doc_id for p in outcome.passages}
        assert given, "no passages reached the composer"
        assert given <= own_docs, f"{request.tenant_id} was given {given - own_docs}"
        cited = {c.doc_id for r in outcome.recommendations for c in r.citations}
        assert cited <= own_docs, f"{request.tenant_id} cited {cited - own_docs}"
        # A citation only where a passage supports the answer; an answer with none says so.
        for r in outcome.recommendations:
            assert r.citations or r.rationale == UNSUPPORTED_NOTE, r
        for contribution in outcome.contributions:
            assert contribution.adapter_ids, "a specialist ran without the tenant's adapter"
            assert all(a.startswith(f"{request.tenant_id}/") for a in contribution.adapter_ids)
        assert outcome.usage_by_step["plan"].input_tokens > 0
    acme = outcomes[str(requests[0].request_id)]
    assert isinstance(acme, RecommendationCompleted)
    assert ["acme/company", "acme/user-ana"] in [c.adapter_ids for c in acme.contributions], (
        "the user's adapter was not stacked on the company's"
    )
