"""What the gateway does with a request's outcome (`recommendation.completed` or `.failed`).

Record it for `GET`, append the final progress step, and queue one delivery per webhook of the
tenant and one Slack reply if the request came from Slack, all from the *first* outcome stored:
a redelivered or contradicting outcome changes nothing, and a run interrupted after recording
but before queueing queues the same deliveries when Kafka hands the event over again.
"""

from __future__ import annotations

import json
import time
from typing import Any

from opentelemetry import propagate

from loraswarm.services.gateway.access import AccessDirectory
from loraswarm.services.gateway.progress import step_of
from loraswarm.services.gateway.slack_blocks import outcome_message
from loraswarm.services.gateway.store import GatewayStore, RequestRecord, RequestStatus
from loraswarm.services.gateway.webhook_signing import message_id, webhook_body
from loraswarm.shared.events import RecommendationCompleted, RecommendationFailed
from loraswarm.shared.metrics import RECOMMENDATION_DURATION, RECOMMENDATIONS

Outcome = RecommendationCompleted | RecommendationFailed


def record_outcome(store: GatewayStore, access: AccessDirectory, event: Outcome) -> RequestRecord | None:
    """Store `event` as its request's outcome and queue its deliveries; the request's record."""
    status: RequestStatus = "completed" if isinstance(event, RecommendationCompleted) else "failed"
    request_id = str(event.request_id)
    first = store.record_outcome(request_id, event.tenant_id, status, event.model_dump(mode="json"))
    if first is not None:
        RECOMMENDATIONS.labels(event.tenant_id, status).inc()
        if first.channel != "kafka":
            RECOMMENDATION_DURATION.labels(status).observe(max(0.0, time.time() - first.created_at))
    step = step_of(event)
    if step is not None:
        store.add_progress(request_id, step[0], step[1], source_event_id=str(event.event_id))
    record = store.get_request(request_id, event.tenant_id)
    if record is None or record.result is None:
        # The request id belongs to another tenant: an outcome never crosses tenants.
        return None
    queue_deliveries(store, access, record)
    return record


def _stored_outcome(record: RequestRecord) -> Outcome:
    assert record.result is not None
    if record.status == "completed":
        return RecommendationCompleted.model_validate(record.result)
    return RecommendationFailed.model_validate(record.result)


def queue_deliveries(store: GatewayStore, access: AccessDirectory, record: RequestRecord) -> int:
    """Queue the deliveries of a request's stored outcome; how many were new."""
    outcome = _stored_outcome(record)
    trace: dict[str, str] = {}
    propagate.inject(trace)  # the consumer's span: deliveries join the request's trace
    common: dict[str, Any] = {
        "request_id": record.request_id,
        "tenant_id": record.tenant_id,
        "event_type": outcome.type,
        "trace": trace,
    }
    queued = 0
    tenant = access.get(record.tenant_id)
    for hook in tenant.webhooks if tenant else []:
        if outcome.type not in hook.events or store.endpoint_disabled(record.tenant_id, hook.url):
            continue
        queued += store.enqueue_delivery(
            webhook_id=message_id(record.request_id, "webhook", hook.url),
            kind="webhook",
            target=hook.url,
            payload=webhook_body(outcome),
            **common,
        )
    if record.channel == "slack":
        message = outcome_message(outcome)
        if url := record.reply.get("response_url"):
            queued += store.enqueue_delivery(
                webhook_id=message_id(record.request_id, "slack_response_url", url),
                kind="slack_response_url",
                target=url,
                payload=json.dumps(message),
                **common,
            )
        elif channel := record.reply.get("channel"):
            post = {k: v for k, v in message.items() if k not in ("response_type", "replace_original")}
            post.update(channel=channel, thread_ts=record.reply.get("thread_ts"))
            queued += store.enqueue_delivery(
                webhook_id=message_id(record.request_id, "slack_message", channel),
                kind="slack_message",
                target=channel,
                payload=json.dumps(post),
                **common,
            )
    return queued
