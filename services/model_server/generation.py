"""One TGI generate request from HTTP body to result, shared by `/`, `/generate`, `/generate_stream` and chat.

`admit` does what happens before the first token (tenant, validation, adapters, grammar) and
raises a `ServingError` with TGI's status and message; `run_to_end` and `run_streaming` then
drive the engine. A client that disconnects cancels its sequence, which frees its batch slot.

Each request gets a GenAI span, `{operation} {model}` (e.g. `text_completion acme/support`), child
of the HTTP server span FastAPI opens (which continues the caller's `traceparent`), carrying the
GenAI attributes: requested and served model (adapter ids), finish reason, token usage.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from opentelemetry.trace import Span, Status, StatusCode
from starlette.requests import Request

from loraswarm.services.model_server.engine import End, Failed, Generated, TokenInfo
from loraswarm.services.model_server.errors import GenerationFailed, IncompleteGeneration, ServingError
from loraswarm.services.model_server.schemas import (
    BestOfSequence,
    Details,
    GenerateParameters,
    GenerateResponse,
    PrefillToken,
    StreamDetails,
    StreamResponse,
    Token,
)
from loraswarm.services.model_server.server import Generation, ModelServer, Prepared
from loraswarm.services.model_server.tenancy import adapter_stack, tenant_of
from loraswarm.services.model_server.validation import validate
from loraswarm.shared.tracing import tracer

T = TypeVar("T")
_DISCONNECT_POLL_S = 0.25


@dataclass(frozen=True)
class Admitted:
    prepared: Prepared
    received_at: float
    span: Span  # the request's GenAI span, ended by `run_to_end` / `run_streaming`
    model: str  # what was asked for: the adapter id(s), or the base model


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def admit(
    server: ModelServer,
    inputs: str,
    parameters: GenerateParameters,
    headers: Mapping[str, str],
    *,
    add_special_tokens: bool = True,
    stream: bool = False,
    default_return_full_text: bool = False,
    record_logits: bool = False,
    operation: str = "text_completion",
) -> Admitted:
    received_at = time.monotonic()
    server.metrics.counters.inc("count")
    model = parameters.adapter_id or server.model_id
    span = tracer().start_span(
        f"{operation} {model}",
        attributes={
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": "loraswarm",
            "gen_ai.request.model": model,
        },
    )
    try:
        limits = server.limits
        tenant = tenant_of(headers, limits)
        adapter_ids = adapter_stack(
            parameters.adapter_id, tenant, max_adapters=limits.max_adapters_per_request
        )
        valid = validate(
            inputs,
            parameters,
            limits=limits,
            tokenizer=server.tokenizer,
            add_special_tokens=add_special_tokens,
            stream=stream,
            default_return_full_text=default_return_full_text,
        )
        prepared = await server.prepare(valid, adapter_ids, tenant, record_logits=record_logits)
    except ServingError as exc:
        server.metrics.counters.inc("failure", exc.error_type)
        _fail(span, exc)
        raise
    span.set_attribute("loraswarm.tenant_id", tenant or "")
    return Admitted(prepared, received_at, span, model)


def _fail(span: Span, exc: BaseException) -> None:
    span.set_status(Status(StatusCode.ERROR, str(exc)))
    span.set_attribute("error.type", getattr(exc, "error_type", type(exc).__name__))
    span.end()


def _succeed(span: Span, admitted: Admitted, end: End) -> None:
    span.set_attributes(
        {
            "gen_ai.response.model": "+".join(a.id for a in admitted.prepared.adapters) or admitted.model,
            "gen_ai.response.finish_reasons": [end.finish_reason],
            "gen_ai.usage.input_tokens": end.input_length,
            "gen_ai.usage.output_tokens": end.generated_tokens,
        }
    )
    span.end()


async def run_to_end(server: ModelServer, admitted: Admitted, request: Request | None) -> Generation:
    """The whole generation (the best of `best_of` samples); `ClientGone` if the client left."""
    prepared = admitted.prepared
    try:
        if prepared.valid.best_of > 1:
            seeds = [random.getrandbits(63) for _ in range(prepared.valid.best_of)]
            runs = await _watch(request, asyncio.gather(*(server.complete(prepared, seed=s) for s in seeds)))
            generation = max(runs, key=lambda g: g.logprob_sum)
            generation.best_of = list(runs)
        else:
            generation = await _watch(request, server.complete(prepared))
    except ServingError as exc:
        server.metrics.counters.inc("failure", exc.error_type)
        _fail(admitted.span, exc)
        raise
    except BaseException as exc:  # the client left (ClientGone, cancellation)
        _fail(admitted.span, exc)
        raise
    assert generation.end is not None
    server.record(prepared, generation, admitted.received_at)
    _succeed(admitted.span, admitted, generation.end)
    return generation


async def _watch(request: Request | None, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and so freeing its batch slot) if the client disconnects."""
    task = asyncio.ensure_future(work)
    if request is None:
        return await task
    while True:
        done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            raise ClientGone()


async def run_streaming(server: ModelServer, admitted: Admitted) -> AsyncGenerator[StreamResponse, None]:
    """TGI stream responses, one per token; the last carries `generated_text` (and details)."""
    prepared = admitted.prepared
    valid = prepared.valid
    index = 0
    try:
        async for event in server.stream(prepared):
            if isinstance(event, Failed):
                raise GenerationFailed(event.message)
            if not isinstance(event, Generated):
                continue
            index += 1
            end = event.end
            text = None
            details = None
            if end is not None:
                text = (valid.inputs + end.generated_text) if valid.return_full_text else end.generated_text
                if valid.details:
                    details = StreamDetails(
                        finish_reason=end.finish_reason,
                        generated_tokens=end.generated_tokens,
                        seed=end.seed,
                        input_length=end.input_length,
                    )
                server.record(prepared, Generation(end=end), admitted.received_at)
                _succeed(admitted.span, admitted, end)
            yield StreamResponse(
                index=index,
                token=_token(event.token),
                top_tokens=[_token(t) for t in event.top_tokens],
                generated_text=text,
                details=details,
            )
            if end is not None:
                return
    except ServingError as exc:
        server.metrics.counters.inc("failure", exc.error_type)
        _fail(admitted.span, exc)
        raise
    except BaseException as exc:  # the client left: the stream was closed early
        _fail(admitted.span, exc)
        raise
    server.metrics.counters.inc("failure", "incomplete")
    _fail(admitted.span, IncompleteGeneration())
    raise IncompleteGeneration()


def generate_response(admitted: Admitted, generation: Generation) -> GenerateResponse:
    valid = admitted.prepared.valid
    end = generation.end
    assert end is not None
    text = (valid.inputs + end.generated_text) if valid.return_full_text else end.generated_text
    details = None
    if valid.details:
        best_of = generation.best_of
        details = Details(
            finish_reason=end.finish_reason,
            generated_tokens=end.generated_tokens,
            seed=end.seed,
            input_length=end.input_length,
            prefill=[PrefillToken(id=t.id, text=t.text, logprob=t.logprob) for t in generation.prefill],
            tokens=[_token(t) for t in generation.tokens],
            top_tokens=[[_token(t) for t in step] for step in generation.top_tokens]
            if valid.top_n_tokens
            else [],
            best_of_sequences=[_best_of(valid.inputs, g, valid.return_full_text) for g in best_of]
            if best_of
            else None,
        )
    return GenerateResponse(generated_text=text, details=details)


def _best_of(inputs: str, g: Generation, full: bool) -> BestOfSequence:
    end = g.end
    assert end is not None
    return BestOfSequence(
        generated_text=(inputs + end.generated_text) if full else end.generated_text,
        finish_reason=end.finish_reason,
        generated_tokens=end.generated_tokens,
        seed=end.seed,
        prefill=[PrefillToken(id=t.id, text=t.text, logprob=t.logprob) for t in g.prefill],
        tokens=[_token(t) for t in g.tokens],
        top_tokens=[[_token(t) for t in step] for step in g.top_tokens if step],
    )


def timing_headers(server: ModelServer, admitted: Admitted, end: End, characters: int) -> dict[str, str]:
    """TGI's `x-*` timing headers (times in ms, `x-compute-time` in s)."""
    now = time.monotonic()
    total = now - admitted.received_at
    validation = max(end.queued_at - admitted.received_at, 0.0)
    queue = max(end.started_at - end.queued_at, 0.0)
    inference = now - end.started_at
    per_token = inference / max(end.generated_tokens, 1)
    return {
        "x-compute-type": server.device.name,
        "x-compute-time": f"{total:.6f}",
        "x-compute-characters": str(characters),
        "x-total-time": str(int(total * 1000)),
        "x-validation-time": str(int(validation * 1000)),
        "x-queue-time": str(int(queue * 1000)),
        "x-inference-time": str(int(inference * 1000)),
        "x-time-per-token": str(int(per_token * 1000)),
        "x-prompt-tokens": str(end.input_length),
        "x-generated-tokens": str(end.generated_tokens),
    }


def _token(t: TokenInfo) -> Token:
    return Token(id=t.id, text=t.text, logprob=t.logprob, special=t.special)
