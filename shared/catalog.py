"""Every topic and its payload on one FastStream broker, for the AsyncAPI document.

Services declare their own subscribers on their own brokers; this catalog declares one publisher
per event topic (with the event's pydantic model as its schema) so the document names every
channel of the whole flow, DLQ included, whether or not a service is running.
"""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from loraswarm.shared.events import EVENT_MODELS, DeadLetter
from loraswarm.shared.topics import DLQ

_DESCRIPTIONS = {
    "recommendation.requested": "A user asks for a recommendation (gateway, Slack, or any producer).",
    "recommendation.completed": "The planner's composed answer with citations and contributors.",
    "recommendation.failed": "A request that ended without an answer, with the reason.",
    "retrieval.requested": "The planner or a specialist asks for passages of the tenant's data.",
    "retrieval.completed": "Passages from the tenant's own Weaviate shard, with citations.",
    "specialist.task": "One specialist's question, adapters and context; also a hand-off.",
    "specialist.result": "A specialist's answer to one task.",
    "documents.submitted": "Documents of a tenant to chunk, embed and index.",
    "documents.indexed": "Documents that were indexed, with counts and timings.",
    "documents.failed": "Documents that could not be indexed, each with the reason.",
    "adapter.train.requested": "Train a company or user adapter on the tenant's data.",
    "adapter.train.progress": "Training progress of one adapter.",
    "adapter.published": "An adapter passed evaluation and the leakage gate; serve it.",
    "adapter.rejected": "An adapter that was not published, with the reason and the numbers.",
}


def catalog_broker() -> KafkaBroker:
    broker = KafkaBroker("localhost:9092")
    for model in EVENT_MODELS:
        broker.publisher(
            model.event_type,
            schema=model,
            title=model.event_type,
            description=_DESCRIPTIONS[model.event_type] + " Key: tenant_id.",
        )
    broker.publisher(
        DLQ,
        schema=DeadLetter,
        title=DLQ,
        description="Messages a consumer could not handle, whole, with where they came from and why.",
    )
    return broker
