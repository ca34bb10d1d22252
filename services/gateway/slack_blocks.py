"""A recommendation as a Slack message (Block Kit), with its citations under each recommendation.

Slack's limits are respected by cutting, never by failing: 50 blocks a message, 3000 characters
a section's text, 10 elements a context block.
"""

from __future__ import annotations

from typing import Any

from loraswarm.shared.events import Citation, RecommendationCompleted, RecommendationFailed

_MAX_TEXT = 3000
_MAX_CONTEXT_ELEMENTS = 10
_MAX_RECOMMENDATIONS = 10


def escape(text: str) -> str:
    """Slack mrkdwn control characters (the only three Slack asks to escape)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _citation(index: int, citation: Citation) -> str:
    title = escape(citation.title or citation.doc_id)
    if citation.source.startswith(("https://", "http://")):
        # `|` would end the link's label early.
        return f"[{index}] <{citation.source}|{title.replace('|', '/')}>"
    return f"[{index}] {title} ({escape(citation.source)})"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cut(text)}}


def _context(lines: list[str]) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(line)} for line in lines]}


def completed_message(event: RecommendationCompleted) -> dict[str, Any]:
    """The `response_url` / chat.postMessage body of a completed recommendation."""
    blocks: list[dict[str, Any]] = []
    if event.summary:
        blocks.append(_section(escape(event.summary)))
    for rec in event.recommendations[:_MAX_RECOMMENDATIONS]:
        blocks.append(_section(f"*{escape(rec.title)}*\n{escape(rec.text)}"))
        if rec.citations:
            cited = [_citation(i, c) for i, c in enumerate(rec.citations, start=1)]
            blocks.append(_context(cited[:_MAX_CONTEXT_ELEMENTS]))
    notes = ["partial answer: composed at the deadline"] if event.partial else []
    blocks.append(_context([*notes, f"request `{event.request_id}`"]))
    first = event.recommendations[0].title if event.recommendations else "Recommendation ready"
    return {
        # Only the asker sees it: the answer may come from their own (private) adapter and data.
        "response_type": "ephemeral",
        "replace_original": False,
        "text": _cut(event.summary or first),  # shown in notifications and where blocks are not
        "blocks": blocks[:50],
    }


def failed_message(event: RecommendationFailed) -> dict[str, Any]:
    text = f":warning: I could not answer that: {escape(event.reason)}"
    return {
        "response_type": "ephemeral",
        "replace_original": False,
        "text": _cut(text),
        "blocks": [_section(text), _context([f"request `{event.request_id}` ({event.code})"])],
    }


def outcome_message(event: RecommendationCompleted | RecommendationFailed) -> dict[str, Any]:
    if isinstance(event, RecommendationCompleted):
        return completed_message(event)
    return failed_message(event)
