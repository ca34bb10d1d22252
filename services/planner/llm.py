"""The primary LLM, through the `openai` client: structured output, timeouts, GenAI spans."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

from openai import AsyncOpenAI
from opentelemetry.trace import SpanKind, Status, StatusCode

from loraswarm.services.planner import accounting
from loraswarm.shared.events import TokenUsage
from loraswarm.shared.settings import OrchestrationSettings
from loraswarm.shared.tracing import context_headers, tracer


class LLMError(Exception):
    """The primary LLM failed, timed out, or answered something unusable."""


@dataclass(frozen=True)
class Completion:
    text: str
    usage: TokenUsage
    duration_ms: float


class PrimaryLLM:
    """Chat completions against any OpenAI-compatible endpoint (the model server by default)."""

    def __init__(self, settings: OrchestrationSettings, client: AsyncOpenAI | None = None) -> None:
        self.settings = settings
        self._owns_client = client is None
        self.client = client or AsyncOpenAI(
            base_url=settings.primary_llm_base_url,
            api_key=settings.primary_llm_api_key.get_secret_value(),
            timeout=settings.llm_timeout_s,
            max_retries=0,  # the planner has its own deadline; retries are its decision
        )

    async def aclose(self) -> None:
        """Close the HTTP client this object opened (one handed in belongs to its caller)."""
        if self._owns_client:
            await self.client.close()

    async def complete_json(
        self,
        messages: list[dict[str, str]],
        *,
        schema: dict[str, Any],
        schema_name: str,
        max_tokens: int,
        timeout_s: float,
        extra_body: dict[str, Any] | None = None,
    ) -> Completion:
        """One chat completion constrained to `schema` (OpenAI `response_format` json_schema);
        `extra_body`: fields beyond OpenAI's, for endpoints that take them.

        Inside `accounting.step(...)` the call is refused when the request's budget is spent, and
        its usage is recorded as soon as it is answered, whatever the caller makes of the answer.
        """
        model = self.settings.primary_llm_model
        ledger = accounting.current()
        if ledger is not None:
            try:
                ledger.check()
            except accounting.BudgetSpent as exc:
                raise LLMError(str(exc)) from exc
        with tracer().start_as_current_span(
            f"chat {model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": model,
                "gen_ai.request.max_tokens": max_tokens,
                "server.address": self.settings.primary_llm_base_url,
            },
        ) as span:
            started = time.perf_counter()
            try:
                # temperature 0: a re-planned request (after a crash) gets the same plan again.
                response_format: Any = {
                    "type": "json_schema",
                    "json_schema": {"name": schema_name, "schema": schema, "strict": True},
                }
                response = await self.client.chat.completions.create(
                    model=model,
                    messages=cast(Any, messages),
                    max_tokens=max_tokens,
                    temperature=0.0,
                    response_format=response_format,
                    timeout=timeout_s,
                    # W3C trace context: the model server's (or any OTel-instrumented
                    # endpoint's) request span joins this request's trace.
                    extra_headers=context_headers(),
                    extra_body=extra_body,
                )
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                span.set_attribute("error.type", type(exc).__name__)
                raise LLMError(f"the primary LLM call failed: {type(exc).__name__}: {exc}") from exc
            usage = TokenUsage(
                input_tokens=response.usage.prompt_tokens if response.usage else 0,
                output_tokens=response.usage.completion_tokens if response.usage else 0,
            )
            if ledger is not None:
                ledger.record(model, usage)
            span.set_attribute("gen_ai.response.model", response.model or model)
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            choice = response.choices[0] if response.choices else None
            if choice is not None and choice.finish_reason:
                span.set_attribute("gen_ai.response.finish_reasons", [choice.finish_reason])
            text = (choice.message.content if choice else None) or ""
            return Completion(text, usage, (time.perf_counter() - started) * 1000)


def parse_json_object(text: str) -> dict[str, Any]:
    """The JSON object in an LLM answer, or `LLMError` saying what was wrong."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise LLMError(f"the answer is not a JSON object: {text[:200]!r}")
    try:
        value = json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        raise LLMError(f"the answer is not valid JSON ({exc}): {text[:200]!r}") from exc
    if not isinstance(value, dict):
        raise LLMError("the answer is not a JSON object")
    return value
