"""The legacy composer: one LLM call writes the whole recommendation from numbered sources.

Kept as the eval's baseline arm (`orchestration.composer: legacy`); the planner composes with
`services/planner/extract.py` by default. If the LLM fails, the recommendation is assembled from
the specialists' own answers, and the event says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loraswarm.services.planner.llm import LLMError, PrimaryLLM, parse_json_object
from loraswarm.services.planner.state import PlannerState
from loraswarm.shared.events import Citation, Recommendation, TokenUsage


# Sized so that even a full composition (~960 characters) fits `compose_max_tokens` (320, at about
# 3-4 characters a token): the model server's grammar enforces each limit as it decodes, so the
# answer is closed, valid JSON rather than one cut off mid-string and thrown away.
class ComposedItem(BaseModel):
    # No other fields: the grammar then offers none, where the model once spent its budget on
    # invented "type" and "id" fields and was cut off.
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=60)
    text: str = Field(min_length=1, max_length=240)
    rationale: str = Field(default="", max_length=80)
    sources: list[int] = Field(default_factory=list, max_length=4, description="Numbers of the sources used.")


class Composition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    summary: str = Field(default="", max_length=120)
    recommendations: list[ComposedItem] = Field(min_length=1, max_length=2)


def numbered_sources(state: PlannerState) -> list[Citation]:
    """Every distinct citation available to the composer, in a stable order."""
    seen: dict[tuple[str, int], Citation] = {}
    for passage in state.passages:
        seen.setdefault((passage.citation.doc_id, passage.citation.position), passage.citation)
    for task in state.tasks.values():
        if task.result is not None:
            for cite in task.result.citations:
                seen.setdefault((cite.doc_id, cite.position), cite)
    return list(seen.values())


def composing_messages(state: PlannerState, sources: list[Citation]) -> list[dict[str, str]]:
    texts = {(p.citation.doc_id, p.citation.position): p.text for p in state.passages}
    listed = "\n".join(
        f"[{i}] {c.title or c.doc_id}: {texts.get((c.doc_id, c.position), '')[:300]}"
        for i, c in enumerate(sources, 1)
    )
    answers = "\n".join(
        f"- {t.specialist}: {t.result.answer[:600]}"
        for t in state.tasks.values()
        if t.result is not None and not t.result.error
    )
    return [
        {
            "role": "system",
            "content": "Compose a short recommendation from the specialists' answers. Cite sources by number. "
            "Answer with JSON only.",
        },
        {
            "role": "user",
            "content": f"Question: {state.request.question}\n\nSpecialists said:\n{answers or '- (nothing)'}\n\n"
            f"Sources:\n{listed or '(none)'}",
        },
    ]


@dataclass
class ComposeOutcome:
    recommendations: list[Recommendation]
    summary: str
    usage: TokenUsage
    notes: list[str] = field(default_factory=list)
    llm_ms: float = 0.0


def from_specialists(state: PlannerState, sources: list[Citation]) -> list[Recommendation]:
    items = []
    for task in state.tasks.values():
        if task.result is not None and not task.result.error and task.result.answer.strip():
            items.append(
                Recommendation(
                    title=f"From {task.specialist}",
                    text=task.result.answer.strip(),
                    rationale=f"{task.specialist} answered: {task.question}",
                    citations=list(task.result.citations) or sources[:2],
                )
            )
    return items


async def compose_legacy(
    llm: PrimaryLLM, state: PlannerState, *, max_tokens: int, timeout_s: float
) -> ComposeOutcome:
    """The composer before issue 14, unchanged: the eval's baseline arm (`composer: legacy`)."""
    sources = numbered_sources(state)
    schema: dict[str, Any] = Composition.model_json_schema()
    notes: list[str] = []
    try:
        completion = await llm.complete_json(
            composing_messages(state, sources),
            schema=schema,
            schema_name="recommendation",
            max_tokens=max_tokens,
            timeout_s=timeout_s,
        )
        composed = Composition.model_validate(parse_json_object(completion.text))
    except (LLMError, ValidationError) as exc:
        notes.append(
            f"composed from the specialists' answers: the primary LLM failed ({str(exc).splitlines()[0]})"
        )
        return ComposeOutcome(from_specialists(state, sources), "", TokenUsage(), notes)
    recommendations = [
        Recommendation(
            title=item.title,
            text=item.text,
            rationale=item.rationale,
            # `or sources[:1]` cites a passage the model never named: kept only so that the
            # baseline arm measures the composer as it was.
            citations=[sources[n - 1] for n in item.sources if 1 <= n <= len(sources)] or sources[:1],
        )
        for item in composed.recommendations
    ]
    return ComposeOutcome(recommendations, composed.summary, completion.usage, notes, completion.duration_ms)
