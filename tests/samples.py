"""One valid example of every event type, as a producer outside the project would write it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loraswarm.shared.envelope import Envelope
from loraswarm.shared.events import (
    AdapterPublished,
    AdapterRejected,
    AdapterTrainProgress,
    AdapterTrainRequested,
    Citation,
    Contribution,
    Document,
    DocumentFailure,
    DocumentsFailed,
    DocumentsIndexed,
    DocumentsSubmitted,
    Passage,
    Recommendation,
    RecommendationCompleted,
    RecommendationFailed,
    RecommendationRequested,
    ReplyTo,
    RetrievalCompleted,
    RetrievalRequested,
    SpecialistResult,
    SpecialistTask,
    TokenUsage,
)


def sample_events(tenant: str = "acme") -> list[Envelope]:
    cite = Citation(doc_id="handbook", source="docs/handbook.md", title="Handbook", position=2)
    passage = Passage(text="Refunds within 30 days.", score=0.83, citation=cite)
    request = RecommendationRequested(
        tenant_id=tenant,
        user_id="ana",
        question="How should we answer a refund request after 40 days?",
        reply_to=ReplyTo(kind="http"),
    )
    task = request.caused(
        SpecialistTask,
        specialist="policy",
        question="What is the refund window?",
        adapter_ids=[f"{tenant}/company", f"{tenant}/ana"],
        context=[passage],
        deadline_at=datetime.now(UTC) + timedelta(seconds=30),
    )
    return [
        request,
        request.caused(
            RecommendationCompleted,
            recommendations=[
                Recommendation(title="Offer credit", text="Offer store credit.", citations=[cite])
            ],
            contributions=[Contribution(specialist="policy", adapter_ids=[f"{tenant}/company"])],
            usage_by_step={"plan": TokenUsage(input_tokens=120, output_tokens=40)},
            timings_ms={"total": 812.5},
        ),
        request.caused(RecommendationFailed, reason="The deadline passed.", code="deadline"),
        request.caused(RetrievalRequested, query="refund window", k=4, sources=["docs"]),
        request.caused(RetrievalCompleted, passages=[passage], duration_ms=12.0),
        task,
        task.caused(
            SpecialistResult, specialist="policy", task_id=task.event_id, answer="30 days.", citations=[cite]
        ),
        DocumentsSubmitted(
            tenant_id=tenant,
            documents=[
                Document(doc_id="handbook", source="docs/handbook.md", title="Handbook", content="# Hi")
            ],
        ),
        DocumentsIndexed(tenant_id=tenant, doc_ids=["handbook"], chunks=3, duration_ms=40.0),
        DocumentsFailed(tenant_id=tenant, failures=[DocumentFailure(doc_id="x.pdf", reason="no text layer")]),
        AdapterTrainRequested(tenant_id=tenant, user_id="ana", name="ana", hyperparameters={"r": 8}),
        AdapterTrainProgress(tenant_id=tenant, adapter_id=f"{tenant}/ana", step=3, total_steps=10, loss=2.1),
        AdapterPublished(
            tenant_id=tenant,
            adapter_id=f"{tenant}/ana",
            version="3",
            uri="store://acme/ana/3",
            metrics={"ppl": 9.1},
        ),
        AdapterRejected(
            tenant_id=tenant, adapter_id=f"{tenant}/ana", reason="leakage gate: exposure 12.1 bits"
        ),
    ]
