"""TGI's routes: `POST /`, `/generate`, `/generate_stream`, `/tokenize`; `GET /info`, `/health`, `/metrics`, `/v1/models`.

As in TGI, errors on `/generate_stream` (and `POST /` with `stream: true`) that TGI knows
(validation, overload, generation) arrive as SSE events `{"error", "error_type"}` on a 200
response; this server's own refusals (tenant, adapter) keep their HTTP status.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from loraswarm.services.model_server.errors import (
    GenerationFailed,
    IncompleteGeneration,
    Overloaded,
    ServingError,
    Unhealthy,
    ValidationFailed,
)
from loraswarm.services.model_server.generation import (
    ClientGone,
    admit,
    generate_response,
    run_streaming,
    run_to_end,
    timing_headers,
)
from loraswarm.services.model_server.schemas import CompatGenerateRequest, GenerateRequest, SimpleToken
from loraswarm.services.model_server.server import ModelServer
from loraswarm.services.model_server.tenancy import tenant_of

# TGI's errors that a stream reports as an event rather than as an HTTP status.
_STREAMED_ERRORS = (ValidationFailed, Overloaded, GenerationFailed, IncompleteGeneration)
_CLIENT_CLOSED = 499  # nginx's code for "the client closed the request"; nobody reads it


def sse(payload: BaseModel | Mapping[str, object]) -> bytes:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else _json(payload)
    return f"data:{data}\n\n".encode()


def _json(payload: Mapping[str, object]) -> str:
    return json.dumps(payload, separators=(",", ":"))


def tgi_router(server: ModelServer) -> APIRouter:
    router = APIRouter()
    limits = server.limits

    async def generate(
        body: GenerateRequest, request: Request, *, default_full_text: bool, as_list: bool
    ) -> Response:
        admitted = await admit(
            server,
            body.inputs,
            body.parameters,
            request.headers,
            add_special_tokens=body.add_special_tokens,
            default_return_full_text=default_full_text,
        )
        try:
            generation = await run_to_end(server, admitted, request)
        except ClientGone:
            return Response(status_code=_CLIENT_CLOSED)
        assert generation.end is not None
        payload = generate_response(admitted, generation).model_dump(mode="json", exclude_none=False)
        if payload.get("details") is None:
            payload.pop("details", None)
        elif payload["details"].get("best_of_sequences") is None:
            payload["details"].pop("best_of_sequences")
        headers = timing_headers(server, admitted, generation.end, len(body.inputs))
        return JSONResponse([payload] if as_list else payload, headers=headers)

    async def generate_stream(
        body: GenerateRequest, request: Request, *, default_full_text: bool
    ) -> Response:
        try:
            admitted = await admit(
                server,
                body.inputs,
                body.parameters,
                request.headers,
                add_special_tokens=body.add_special_tokens,
                stream=True,
                default_return_full_text=default_full_text,
            )
        except _STREAMED_ERRORS as exc:
            return _event_stream(_one_error(exc))

        async def events() -> AsyncIterator[bytes]:
            async with aclosing(run_streaming(server, admitted)) as tokens:
                try:
                    async for token in tokens:
                        yield sse(token)
                except ServingError as exc:
                    yield sse(exc.body())

        return _event_stream(events())

    @router.post("/", response_model=None)
    async def compat_generate(body: CompatGenerateRequest, request: Request) -> Response:
        """TGI's compatibility route: a JSON list of one answer, or a stream when `stream` is true."""
        if body.stream:
            return await generate_stream(body, request, default_full_text=limits.compat_return_full_text)
        return await generate(body, request, default_full_text=limits.compat_return_full_text, as_list=True)

    @router.post("/generate", response_model=None)
    async def generate_route(body: GenerateRequest, request: Request) -> Response:
        return await generate(body, request, default_full_text=False, as_list=False)

    @router.post("/generate_stream", response_model=None)
    async def generate_stream_route(body: GenerateRequest, request: Request) -> Response:
        return await generate_stream(body, request, default_full_text=False)

    @router.post("/tokenize")
    async def tokenize(body: GenerateRequest, request: Request) -> list[SimpleToken]:
        tenant_of(request.headers, limits)
        encoding = server.tokenizer(
            body.inputs, add_special_tokens=body.add_special_tokens, return_offsets_mapping=True
        )
        ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
        truncate = body.parameters.truncate
        if truncate:
            ids, offsets = ids[-truncate:], offsets[-truncate:]
        return [
            SimpleToken(id=i, text=body.inputs[start:stop], start=start, stop=stop)
            for i, (start, stop) in zip(ids, offsets, strict=True)
        ]

    @router.get("/info")
    async def info() -> dict[str, object]:
        return {
            "model_id": server.model_id,
            "model_sha": server.model_sha,
            "model_dtype": str(server.device.dtype).removeprefix("torch."),
            "model_device_type": server.device.name,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": limits.max_concurrent_requests,
            "max_best_of": limits.max_best_of,
            "max_stop_sequences": limits.max_stop_sequences,
            "max_input_tokens": limits.max_input_tokens,
            "max_total_tokens": limits.max_total_tokens,
            "validation_workers": 1,
            "max_client_batch_size": 1,
            "router": "loraswarm-model-server",
            "version": server.version,
            "sha": None,
            "docker_label": None,
        }

    @router.get("/health")
    async def health() -> Response:
        if not server.healthy:
            raise Unhealthy()
        return Response(status_code=200)

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/v1/models")
    async def models(request: Request) -> dict[str, object]:
        """The base model, and the adapters of the caller's tenant (usable as `model`), in vLLM's
        shape: an adapter's `parent` is the base model and its `root` the folder it is served from."""
        tenant = tenant_of(request.headers, limits)
        data: list[dict[str, object]] = [
            {
                "id": server.model_id,
                "object": "model",
                "created": 0,
                "owned_by": server.model_id,
                "root": server.model_id,
                "parent": None,
            }
        ]
        if tenant is not None:
            for version in server.registry.store.list(tenant):
                data.append(
                    {
                        "id": f"{version.ref.tenant_id}/{version.ref.name}",
                        "object": "model",
                        "created": int(version.manifest.created_at.timestamp()),
                        "owned_by": tenant,
                        "root": str(version.path),
                        "parent": server.model_id,
                    }
                )
        return {"object": "list", "data": data}

    return router


async def _one_error(exc: ServingError) -> AsyncIterator[bytes]:
    yield sse(exc.body())


def _event_stream(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
