"""An OpenAI-compatible chat endpoint that answers from a script, for the planner's failure paths.

The planner talks to it through the real `openai` client over HTTP. It stands in for a primary LLM
that misbehaves on cue (garbage, unknown specialists, timeouts), which no real model does on demand.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request

from tests.processes import free_port


@dataclass
class Script:
    """Answers in order; `None` means: hang past any timeout. When empty, `default` is used."""

    answers: list[str | None] = field(default_factory=list)
    default: str = '{"specialists": []}'
    requests: list[dict[str, Any]] = field(default_factory=list)

    def next(self) -> str | None:
        return self.answers.pop(0) if self.answers else self.default


def _app(script: Script) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        script.requests.append(body)
        answer = script.next()
        if answer is None:
            await asyncio.sleep(3600)
        return {
            "id": "scripted",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "scripted"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }

    return app


@contextmanager
def serve(script: Script) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_app(script), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
