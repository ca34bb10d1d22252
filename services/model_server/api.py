"""The HTTP application: TGI's routes, the OpenAI chat route, the admin routes, TGI's error bodies."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from loraswarm.services.model_server.admin_routes import admin_router
from loraswarm.services.model_server.chat_routes import chat_router
from loraswarm.services.model_server.errors import ServingError
from loraswarm.services.model_server.server import ModelServer
from loraswarm.services.model_server.tgi_routes import tgi_router
from loraswarm.services.model_server.vllm_routes import vllm_router


def create_app(server: ModelServer) -> FastAPI:
    # FastAPI's own OpenTelemetry makes the SERVER span of each request (continuing the caller's
    # `traceparent`); `ModelServer.record` adds the GenAI attributes to it.
    app = FastAPI(
        title="loraswarm model server",
        description="TGI- and OpenAI-compatible serving of one base model with per-tenant LoRA adapters.",
        version=server.version,
    )
    app.include_router(tgi_router(server))
    app.include_router(chat_router(server))
    app.include_router(admin_router(server))
    app.include_router(vllm_router(server))

    @app.exception_handler(ServingError)
    async def serving_error(_: Request, exc: ServingError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def malformed_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        # TGI (axum's Json extractor) answers a body of the wrong shape with 422 and this sentence.
        server.metrics.counters.inc("count")
        server.metrics.counters.inc("failure", "validation")
        return JSONResponse(
            {
                "error": f"Failed to deserialize the JSON body into the target type: {_describe(exc.errors())}",
                "error_type": "validation",
            },
            status_code=422,
        )

    return app


def _describe(errors: Any) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return "; ".join(parts)
