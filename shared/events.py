"""Every event of the whole flow (DESIGN.md §1 and §3): the single source of truth.

JSON Schema for each is generated into schemas/ (`loraswarm schemas export`); a test fails when
the committed files drift from these models.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loraswarm.shared.envelope import Envelope
from loraswarm.shared.ids import ADAPTER_ID

UserId = Annotated[str, Field(min_length=1, max_length=128, description="A user inside the tenant.")]
AdapterId = Annotated[
    str,
    Field(
        pattern=ADAPTER_ID,
        description="An adapter name `<tenant>/<name>[@version]`.",
    ),
]


class Part(BaseModel):
    """A value object inside an event payload."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Citation(Part):
    doc_id: str = Field(description="Stable id of the cited document inside its tenant.")
    source: str = Field(description="Where the document came from (a path, a URL, `gateway`).")
    title: str = Field(default="", description="The document's title.")
    position: int = Field(default=0, ge=0, description="Index of the cited chunk in the document.")


class Passage(Part):
    text: str = Field(description="The retrieved chunk's text.")
    score: float = Field(description="Hybrid (BM25 + vector) relevance score.")
    citation: Citation


class TokenUsage(Part):
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)


# ---------------------------------------------------------------- recommendation


class ReplyTo(Part):
    """Where the gateway delivers the answer besides the `recommendation.completed` topic."""

    kind: Literal["http", "webhook", "slack"] = Field(description="The channel the request came on.")
    slack_response_url: str | None = Field(default=None, description="Slack's `response_url`.")


class RecommendationRequested(Envelope):
    type: Literal["recommendation.requested"] = "recommendation.requested"
    user_id: UserId | None = None
    question: str = Field(min_length=1, max_length=8000, description="What the user asks.")
    deadline_s: float = Field(
        default=60.0, gt=0, le=3600, description="Whole-request deadline, from `occurred_at`."
    )
    sources: list[str] = Field(
        default_factory=list, description="Data sources to use; empty means the tenant's default."
    )
    reply_to: ReplyTo | None = None


class Recommendation(Part):
    title: str
    text: str
    rationale: str = ""
    citations: list[Citation] = Field(default_factory=list)


class Contribution(Part):
    specialist: str
    adapter_ids: list[AdapterId] = Field(default_factory=list)
    usage: TokenUsage = TokenUsage()
    duration_ms: float = Field(default=0.0, ge=0)


class RecommendationCompleted(Envelope):
    type: Literal["recommendation.completed"] = "recommendation.completed"
    user_id: UserId | None = None
    recommendations: list[Recommendation]
    summary: str = ""
    contributions: list[Contribution] = Field(default_factory=list)
    usage_by_step: dict[str, TokenUsage] = Field(default_factory=dict)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    partial: bool = Field(default=False, description="Composed at the deadline from what arrived.")
    notes: list[str] = Field(
        default_factory=list, description="What went differently, e.g. a default plan was used."
    )
    passages: list[Passage] = Field(
        default_factory=list,
        description="The passages the answer was composed from; its citations point into these.",
    )


class RecommendationFailed(Envelope):
    type: Literal["recommendation.failed"] = "recommendation.failed"
    user_id: UserId | None = None
    reason: str = Field(description="Why, in a sentence a user can act on.")
    code: Literal["deadline", "invalid_request", "llm_error", "guardrail", "internal"]
    usage_by_step: dict[str, TokenUsage] = Field(
        default_factory=dict, description="Tokens every LLM call of the request used before it failed."
    )


# ---------------------------------------------------------------- retrieval


class RetrievalRequested(Envelope):
    type: Literal["retrieval.requested"] = "retrieval.requested"
    user_id: UserId | None = None
    query: str = Field(min_length=1, max_length=8000)
    k: int = Field(default=5, ge=1, le=100)
    alpha: float = Field(default=0.5, ge=0, le=1, description="0 = BM25 only, 1 = vector only.")
    sources: list[str] = Field(default_factory=list, description="Only these sources; empty = all.")


class RetrievalCompleted(Envelope):
    type: Literal["retrieval.completed"] = "retrieval.completed"
    user_id: UserId | None = None
    passages: list[Passage]
    duration_ms: float = Field(default=0.0, ge=0)
    error: str | None = Field(
        default=None, description="Set when the search could not run (then `passages` is empty)."
    )


# ---------------------------------------------------------------- specialists


class SpecialistTask(Envelope):
    type: Literal["specialist.task"] = "specialist.task"
    user_id: UserId | None = None
    specialist: str = Field(min_length=1, max_length=64)
    question: str = Field(min_length=1, max_length=8000)
    adapter_ids: list[AdapterId] = Field(
        default_factory=list, description="Adapters applied together (company, then user)."
    )
    context: list[Passage] = Field(default_factory=list)
    hop: int = Field(default=0, ge=0, description="How many hand-offs led here.")
    peers: list[str] = Field(
        default_factory=list,
        description="Other specialists already asked in this request: a hand-off to one of them "
        "would only repeat its work, so it is not offered.",
    )
    deadline_at: datetime


class Handoff(Part):
    """A task a specialist passed on to another specialist (swarm style)."""

    task_id: uuid.UUID
    specialist: str
    question: str
    adapter_ids: list[AdapterId] = Field(default_factory=list)
    hop: int = Field(ge=1)


class SpecialistResult(Envelope):
    type: Literal["specialist.result"] = "specialist.result"
    user_id: UserId | None = None
    specialist: str
    task_id: uuid.UUID = Field(description="The `event_id` of the task this answers.")
    answer: str = ""
    citations: list[Citation] = Field(default_factory=list)
    adapter_ids: list[AdapterId] = Field(default_factory=list)
    usage: TokenUsage = TokenUsage()
    error: str | None = Field(default=None, description="Set when the specialist could not answer.")
    handoffs: list[Handoff] = Field(
        default_factory=list, description="Tasks this specialist passed on; the planner waits for them too."
    )
    duration_ms: float = Field(default=0.0, ge=0)


# ---------------------------------------------------------------- documents


class Document(Part):
    doc_id: str = Field(min_length=1, max_length=512)
    source: str = Field(min_length=1, max_length=1024)
    title: str = ""
    visibility: str = Field(
        default="company",
        pattern=r"^(company|user:.+)$",
        description="`company`, or `user:<id>` for a user's private document.",
    )
    media_type: str = Field(default="text/plain", description="MIME type of `content`.")
    content: str = Field(description="Text, or base64 when `content_encoding` is `base64`.")
    content_encoding: Literal["utf-8", "base64"] = "utf-8"
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentsSubmitted(Envelope):
    type: Literal["documents.submitted"] = "documents.submitted"
    documents: list[Document] = Field(min_length=1, max_length=1000)


class DocumentsIndexed(Envelope):
    type: Literal["documents.indexed"] = "documents.indexed"
    doc_ids: list[str]
    chunks: int = Field(ge=0)
    duration_ms: float = Field(default=0.0, ge=0)
    unchanged_doc_ids: list[str] = Field(
        default_factory=list,
        description="Of `doc_ids`, those already indexed at this version: nothing was rewritten.",
    )
    timings_ms: dict[str, float] = Field(
        default_factory=dict, description="Time per stage (parse, embed, write_wait, ...), in ms."
    )


class DocumentFailure(Part):
    doc_id: str
    reason: str


class DocumentsFailed(Envelope):
    type: Literal["documents.failed"] = "documents.failed"
    failures: list[DocumentFailure] = Field(min_length=1)


# ---------------------------------------------------------------- adapters


class TrainingData(Part):
    documents: bool = Field(default=True, description="Use the ingested documents in scope.")
    examples_path: str | None = Field(
        default=None, description="A JSONL file of chat examples in the tenant's data store."
    )
    sources: list[str] = Field(default_factory=list, description="Only these sources; empty = all.")


class AdapterTrainRequested(Envelope):
    type: Literal["adapter.train.requested"] = "adapter.train.requested"
    user_id: UserId | None = Field(
        default=None, description="Set for a user's adapter; unset for the company adapter."
    )
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    method: Literal["lora", "llama_adapter"] = "lora"
    base_model: str | None = Field(default=None, description="Default: the server's base model.")
    hyperparameters: dict[str, float | int | str | bool | list[str]] = Field(default_factory=dict)
    data: TrainingData = TrainingData()


class AdapterTrainProgress(Envelope):
    type: Literal["adapter.train.progress"] = "adapter.train.progress"
    adapter_id: AdapterId
    phase: Literal["training", "evaluation"] = Field(
        default="training", description="`training`: optimizer steps; `evaluation`: models evaluated."
    )
    step: int = Field(ge=0)
    total_steps: int = Field(ge=0)
    loss: float | None = None


class AdapterPublished(Envelope):
    type: Literal["adapter.published"] = "adapter.published"
    adapter_id: AdapterId
    version: str
    uri: str = Field(description="Where the artifact lives in the adapter store.")
    metrics: dict[str, float] = Field(default_factory=dict)


# Why the trainer refused a request: the one list (services/trainer/errors.py maps exceptions to it).
RejectionCode = Literal[
    "invalid_request",
    "unknown_tenant",
    "wrong_base_model",
    "scope_violation",
    "empty_dataset",
    "tiny_dataset",
    "corrupt_data",
    "already_training",
    "nan_loss",
    "quality_regression",
    "leakage",
    "leakage_unmeasurable",
    "unavailable",
    "internal",
]


class AdapterRejected(Envelope):
    type: Literal["adapter.rejected"] = "adapter.rejected"
    adapter_id: str
    reason: str
    code: RejectionCode = Field(
        default="internal", description="The kind of reason, for programs; `reason` is for people."
    )
    metrics: dict[str, float] = Field(default_factory=dict)


# ---------------------------------------------------------------- dead letters


class DeadLetter(BaseModel):
    """A message a consumer could not handle, kept whole with why (DESIGN.md §1).

    Not an envelope event: a poison message may have no readable tenant at all.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["dlq"] = "dlq"
    original_topic: str
    partition: int
    offset: int
    key_b64: str | None = Field(description="The original Kafka key, base64.")
    value_b64: str = Field(description="The original message bytes, base64.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Original headers (values decoded as UTF-8, lossy)."
    )
    consumer_group: str | None
    error_type: Literal[
        "not_json", "too_large", "unknown_type", "validation", "key_mismatch", "handler_error"
    ]
    error: str = Field(description="What was wrong, in words.")
    attempts: int = Field(default=1, ge=1, description="Handler attempts before giving up.")
    failed_at: datetime


EVENT_MODELS: tuple[type[Envelope], ...] = (
    RecommendationRequested,
    RecommendationCompleted,
    RecommendationFailed,
    RetrievalRequested,
    RetrievalCompleted,
    SpecialistTask,
    SpecialistResult,
    DocumentsSubmitted,
    DocumentsIndexed,
    DocumentsFailed,
    AdapterTrainRequested,
    AdapterTrainProgress,
    AdapterPublished,
    AdapterRejected,
)

EVENT_BY_TYPE: dict[str, type[Envelope]] = {m.event_type: m for m in EVENT_MODELS}
