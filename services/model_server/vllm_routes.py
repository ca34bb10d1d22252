"""vLLM's LoRA API: `/v1/completions` with `model` = an adapter, and run-time load/unload.

So that a client written for vLLM (the `openai` client, `model="acme/company"`) works against this
server unchanged (vLLM: docs/features/lora.md; ../shared/REFERENCE.md):

- `POST /v1/completions`: OpenAI's completions API. `model` names an adapter of the caller's tenant
  (or the base model: its id, `""`, `tgi`); an unknown adapter is a 404, as in vLLM. OpenAI's
  defaults hold (`max_tokens` 16, `temperature` 1.0: sampling); `response_format` constrains the
  text as on the chat route. Not supported, refused with a clear 422: `stream`, `echo`, `logprobs`,
  `n` > 1, `best_of` > 1, and a prompt that is a list of several prompts or of token ids.
- `POST /v1/load_lora_adapter` `{"lora_name", "lora_path"}` and `POST /v1/unload_lora_adapter`
  `{"lora_name"}`, behind the admin routes' key (admin_routes.py). Here adapters come from the
  adapter store, where only the trainer's gate publishes them: `lora_name` is a stored adapter's id
  and `lora_path`, when given, must be the folder of its current version — loading any other folder
  would serve an adapter nobody checked. Loading warms the adapter into memory; unloading drops it
  from memory only (the next request naming it loads it again: to stop serving an adapter, delete
  or roll it back in the store).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import Field, NonNegativeInt

from loraswarm.services.model_server.admin_routes import require_admin
from loraswarm.services.model_server.chat_routes import (
    FINISH_REASONS,
    openai_parameters,
    requested_adapter,
    usage,
)
from loraswarm.services.model_server.errors import AdapterMissing, ServingError, ValidationFailed
from loraswarm.services.model_server.generation import ClientGone, admit, run_to_end, timing_headers
from loraswarm.services.model_server.schemas import Body, GenerateParameters, ResponseFormat
from loraswarm.services.model_server.server import ModelServer
from loraswarm.shared.adapter_store import AdapterNotFound, AdapterRef, parse_adapter_id


class CompletionRequest(Body):
    model: str | None = None
    prompt: str | list[str] | list[int] = Field(min_length=1)
    max_tokens: NonNegativeInt | None = 16  # OpenAI's default
    temperature: float | None = 1.0  # OpenAI's default: sampling
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    no_repeat_ngram_size: NonNegativeInt | None = None  # this server's extension (sampling.py)
    seed: NonNegativeInt | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    best_of: int | None = None
    stream: bool = False
    echo: bool = False
    logprobs: int | None = None
    response_format: ResponseFormat | None = None


class LoadLoraAdapter(Body):
    lora_name: str
    lora_path: str | None = None


class UnloadLoraAdapter(Body):
    lora_name: str


def vllm_router(server: ModelServer) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        model = body.model or ""
        adapter_id = requested_adapter(server, model)
        try:
            prompt = _prompt(body)
            parameters = _parameters(body, adapter_id)
        except ServingError as exc:
            server.metrics.counters.inc("count")
            server.metrics.counters.inc("failure", exc.error_type)
            raise
        admitted = await admit(server, prompt, parameters, request.headers, operation="text_completion")
        try:
            generation = await run_to_end(server, admitted, request)
        except ClientGone:
            return Response(status_code=499)
        end = generation.end
        assert end is not None
        payload = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model if adapter_id else server.model_id,
            "choices": [
                {
                    "index": 0,
                    "text": end.generated_text,
                    "logprobs": None,
                    "finish_reason": FINISH_REASONS[end.finish_reason],
                    "stop_reason": None,
                }
            ],
            "usage": usage(end.input_length, end.generated_tokens),
        }
        return JSONResponse(payload, headers=timing_headers(server, admitted, end, len(prompt)))

    @router.post("/v1/load_lora_adapter", response_model=None)
    async def load_lora_adapter(body: LoadLoraAdapter, request: Request) -> Response:
        require_admin(server, request)
        await asyncio.to_thread(_load, server, body)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @router.post("/v1/unload_lora_adapter", response_model=None)
    async def unload_lora_adapter(body: UnloadLoraAdapter, request: Request) -> Response:
        require_admin(server, request)
        ref = _ref(body.lora_name)
        if not server.registry.unload(ref.tenant_id, ref.name):
            raise AdapterMissing(f"The lora adapter '{body.lora_name}' cannot be found.")
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    return router


def _ref(name: str) -> AdapterRef:
    try:
        return parse_adapter_id(name)
    except AdapterNotFound as exc:
        raise AdapterMissing(str(exc)) from exc


def _load(server: ModelServer, body: LoadLoraAdapter) -> None:
    """Warm the stored adapter `lora_name` into memory, if `lora_path` (when given) is its folder."""
    try:
        current = server.registry.store.resolve(body.lora_name).path
    except AdapterNotFound as exc:
        raise AdapterMissing(f"The lora adapter '{body.lora_name}' cannot be found: {exc}") from exc
    if body.lora_path is not None and Path(body.lora_path).resolve() != current.resolve():
        raise ValidationFailed(
            f"lora_path {body.lora_path!r} is not the stored folder of {body.lora_name!r} ({current}): "
            "this server serves only adapters published to its store by the trainer's gate; omit "
            "lora_path, or publish the adapter with `loraswarm adapters train`"
        )
    server.load_adapters((body.lora_name,))


def _prompt(body: CompletionRequest) -> str:
    unsupported = [
        what
        for what, used in (
            ("`stream`", body.stream),
            ("`echo`", body.echo),
            ("`logprobs`", body.logprobs is not None),
            ("`n` > 1", body.n not in (None, 1)),
            ("`best_of` > 1", body.best_of not in (None, 1)),
        )
        if used
    ]
    if unsupported:
        raise ValidationFailed(
            f"{', '.join(unsupported)} on /v1/completions are not supported by this server; "
            "use /v1/chat/completions (streams) or /generate_stream (token details)"
        )
    if isinstance(body.prompt, str):
        return body.prompt
    if len(body.prompt) == 1 and isinstance(body.prompt[0], str):
        return body.prompt[0]
    raise ValidationFailed("`prompt` must be one string on this server (not several prompts, not token ids)")


def _parameters(body: CompletionRequest, adapter_id: str | None) -> GenerateParameters:
    return openai_parameters(body, adapter_id, max_new_tokens=body.max_tokens)
