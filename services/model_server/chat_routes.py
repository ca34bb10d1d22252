"""`POST /v1/chat/completions`: the OpenAI chat API, mapped onto a TGI generate request as TGI maps it.

`model` selects the adapter (or a stack, `acme/company+acme/user-7`); `""`, `"tgi"`, `"dummy"`
(what huggingface_hub sends when no model is given) and the base model's own id mean the base
model. `temperature: 0` means greedy; any other temperature samples, as in TGI. `response_format`
(`{"type": "json_schema", "json_schema": {"schema": ...}}`, TGI's `{"type": "json", "value": ...}`,
or `{"type": "json_object"}`) constrains the answer with xgrammar. Streams end with `data: [DONE]`.

Differences from TGI, on purpose: `presence_penalty` is OpenAI's (subtract it from every token
already present) where TGI turns it into a repetition penalty of `presence_penalty + 2`; `tools`
and `n > 1` are refused with a clear 422 rather than half-supported.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, Protocol

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from loraswarm.services.model_server.errors import ServingError, ValidationFailed
from loraswarm.services.model_server.generation import (
    ClientGone,
    admit,
    run_streaming,
    run_to_end,
    timing_headers,
)
from loraswarm.services.model_server.schemas import (
    ChatRequest,
    GenerateParameters,
    Grammar,
    ResponseFormat,
    Token,
)
from loraswarm.services.model_server.server import ModelServer

BASE_MODEL_NAMES = frozenset({"", "tgi", "dummy"})
FINISH_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}  # TGI's -> OpenAI's


def requested_adapter(server: ModelServer, model: str | None) -> str | None:
    """The adapter (or stack) an OpenAI `model` names; None for the base model's names."""
    name = model or ""
    return None if name in BASE_MODEL_NAMES or name == server.model_id else name


def chat_router(server: ModelServer) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        model = body.model or ""
        adapter_id = requested_adapter(server, model)
        try:
            prompt = _prompt(server, body)
            parameters = _parameters(body, adapter_id)
        except ServingError as exc:
            server.metrics.counters.inc("count")
            server.metrics.counters.inc("failure", exc.error_type)
            raise
        admitted = await admit(
            server,
            prompt,
            parameters,
            request.headers,
            add_special_tokens=False,
            stream=body.stream,
            operation="chat",
        )
        shown_model = model if adapter_id else server.model_id
        fingerprint = f"{server.version}-native"
        created = int(time.time())
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        want_logprobs = bool(body.logprobs)

        if body.stream:

            async def events() -> AsyncIterator[bytes]:
                totals = None
                async with aclosing(run_streaming(server, admitted)) as tokens:
                    try:
                        async for item in tokens:
                            finish = None
                            if item.generated_text is not None and item.details is not None:
                                finish = FINISH_REASONS[item.details.finish_reason]
                                totals = usage(item.details.input_length, item.details.generated_tokens)
                            chunk = {
                                "id": completion_id,
                                "object": "chat.completion.chunk",
                                "created": created,
                                "model": shown_model,
                                "system_fingerprint": fingerprint,
                                "choices": [
                                    {
                                        "index": 0,
                                        "delta": {
                                            "role": "assistant",
                                            "content": "" if item.token.special else item.token.text,
                                        },
                                        "logprobs": _logprobs([item.token], [item.top_tokens])
                                        if want_logprobs
                                        else None,
                                        "finish_reason": finish,
                                    }
                                ],
                                "usage": None,
                            }
                            yield _sse(chunk)
                    except ServingError as exc:
                        yield _sse({"error": {"message": str(exc), "http_status_code": exc.status}})
                if (
                    totals is not None
                    and body.stream_options is not None
                    and body.stream_options.include_usage
                ):
                    yield _sse(
                        {
                            "id": completion_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": shown_model,
                            "system_fingerprint": fingerprint,
                            "choices": [],
                            "usage": totals,
                        }
                    )
                yield b"data: [DONE]\n\n"

            return StreamingResponse(
                events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )

        try:
            generation = await run_to_end(server, admitted, request)
        except ClientGone:
            return Response(status_code=499)
        end = generation.end
        assert end is not None
        tokens = [
            Token(id=t.id, text=t.text, logprob=t.logprob, special=t.special) for t in generation.tokens
        ]
        tops = [
            [Token(id=t.id, text=t.text, logprob=t.logprob, special=t.special) for t in s]
            for s in generation.top_tokens
        ]
        payload = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": shown_model,
            "system_fingerprint": fingerprint,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": end.generated_text},
                    "logprobs": _logprobs(tokens, tops) if want_logprobs else None,
                    "finish_reason": FINISH_REASONS[end.finish_reason],
                }
            ],
            "usage": usage(end.input_length, end.generated_tokens),
        }
        return JSONResponse(payload, headers=timing_headers(server, admitted, end, len(prompt)))

    return router


def _prompt(server: ModelServer, body: ChatRequest) -> str:
    if body.tools:
        raise ValidationFailed(
            "`tools` are not supported by this server; use `response_format` for structured output"
        )
    if body.n is not None and body.n != 1:
        raise ValidationFailed("`n` must be 1 on this server")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        return str(server.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    except Exception as exc:  # jinja errors: a template the messages do not fit
        raise ValidationFailed(f"the chat template cannot render these messages: {exc}") from exc


def _parameters(body: ChatRequest, adapter_id: str | None) -> GenerateParameters:
    return openai_parameters(
        body,
        adapter_id,
        max_new_tokens=body.max_completion_tokens
        if body.max_completion_tokens is not None
        else body.max_tokens,
        top_n_tokens=body.top_logprobs if body.logprobs else None,
    )


class OpenAISampling(Protocol):
    """The sampling fields OpenAI's chat and completions requests share."""

    temperature: float | None
    top_p: float | None
    frequency_penalty: float | None
    presence_penalty: float | None
    no_repeat_ngram_size: int | None
    seed: int | None
    stop: str | list[str] | None
    response_format: ResponseFormat | None


def openai_parameters(
    body: OpenAISampling,
    adapter_id: str | None,
    *,
    max_new_tokens: int | None,
    top_n_tokens: int | None = None,
) -> GenerateParameters:
    """A TGI generate request's parameters for an OpenAI request: `temperature` 0 is greedy, any
    other samples (as TGI maps it)."""
    greedy = body.temperature == 0.0
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return GenerateParameters(
        adapter_id=adapter_id,
        temperature=None if greedy else body.temperature,
        do_sample=not greedy,
        top_p=body.top_p,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
        no_repeat_ngram_size=body.no_repeat_ngram_size,
        max_new_tokens=max_new_tokens,
        seed=body.seed,
        stop=stop,
        details=True,
        top_n_tokens=top_n_tokens,
        grammar=request_grammar(body.response_format),
    )


def request_grammar(fmt: ResponseFormat | None) -> Grammar | None:
    """The generate request's grammar for an OpenAI (or TGI) `response_format`."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema":
        if fmt.json_schema is not None:
            return Grammar(type="json", value=fmt.json_schema.schema_)
        return Grammar(type="json_schema", value=fmt.value)
    return Grammar(type=fmt.type, value=fmt.value)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _logprobs(tokens: list[Token], tops: list[list[Token]]) -> dict[str, Any]:
    content = []
    for i, t in enumerate(tokens):
        top = tops[i] if i < len(tops) else []
        content.append(
            {
                "token": t.text,
                "logprob": t.logprob,
                "top_logprobs": [{"token": x.text, "logprob": x.logprob} for x in top],
            }
        )
    return {"content": content}


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
