"""The LLM generator: its schema is strict; bad output (not JSON, empty, off the schema, late, an
HTTP error) is counted and skipped while the build goes on — driven against a small local HTTP
server that answers exactly those (fault injection) — and once against the project's real model
server."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import uvicorn
from openai.lib._pydantic import _ensure_strict_json_schema

from loraswarm.services.model_server.api import create_app
from loraswarm.services.model_server.server import ModelServer
from loraswarm.services.trainer.builder import LLMGenerator, TrainingSetBuilder
from loraswarm.services.trainer.builder.llm import pairs_schema
from loraswarm.services.trainer.corpus import CorpusChunk
from loraswarm.shared.answer_checks import ungrounded_claims
from loraswarm.shared.settings import ModelServerSettings, Settings
from loraswarm.shared.settings.trainer import BuilderSettings
from tests.planner.test_strict_schemas import problems
from tests.processes import free_port

FACT = "The cleaning fee at Larkspur is 17 euros."


def test_the_generators_schema_passes_the_strict_schema_checks() -> None:
    schema = pairs_schema()
    assert problems(schema) == []
    assert _ensure_strict_json_schema(copy.deepcopy(schema), path=(), root=copy.deepcopy(schema)) == schema


def _pairs(question: str, answer: str) -> str:
    return json.dumps({"pairs": [{"kind": "fact", "question": question, "answer": answer}]})


# What the fake endpoint answers for a chunk that names the case: (status, content, delay).
CASES: dict[str, tuple[int, str | None, float]] = {
    "valid": (200, _pairs("How much is the cleaning fee at Larkspur?", FACT), 0.0),
    "ungrounded": (
        200,
        _pairs("How much is the cleaning fee at Larkspur?", "The cleaning fee is 99 euros."),
        0.0,
    ),
    "notjson": (200, "Sure! Here are some questions about fees.", 0.0),
    "empty": (200, "", 0.0),
    "nocontent": (200, None, 0.0),
    "offschema": (200, json.dumps({"pairs": [{"q": "fee?", "a": FACT}]}), 0.0),
    "slow": (200, _pairs("How much is the cleaning fee?", FACT), 3.0),
    "broken": (500, None, 0.0),
}


class _Endpoint(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        passage = body["messages"][-1]["content"]
        case = next(name for name in CASES if f"case-{name}" in passage)
        status, content, delay = CASES[case]
        time.sleep(delay)
        if status != 200:
            reply: dict[str, Any] = {"error": {"message": "boom", "type": "server_error"}}
        else:
            reply = {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the client gave up (the timeout case)
            self.wfile.write(data)


@pytest.fixture
def endpoint() -> Iterator[str]:
    _Endpoint.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_bad_generator_output_is_counted_and_skipped_and_the_job_goes_on(endpoint: str) -> None:
    chunks = [
        CorpusChunk(f"fees-{name}.md", 0, "v", "company", f"Fees case-{name}\n{FACT}") for name in CASES
    ]
    generator = LLMGenerator.connect(endpoint, "k", "gpt-4o-mini", timeout_s=1.0)
    built = TrainingSetBuilder([generator], BuilderSettings(style_examples=0, raft_per_chunk=0)).build(chunks)
    assert dict(built.failures) == {
        "llm: not JSON": 1,
        "llm: empty": 2,
        "llm: off-schema": 1,
        "llm: timeout": 1,
        "llm: call failed (InternalServerError)": 1,
    }
    assert [(e.chunk, e.answer) for e in built.examples] == [("fees-valid.md#0", FACT)]
    assert [(d.chunk, d.reason) for d in built.drops] == [("fees-ungrounded.md#0", "ungrounded")]
    # What was sent: strict structured output, the chunk as the passage.
    sent = _Endpoint.seen[0]
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["strict"] is True
    assert sent["response_format"]["json_schema"]["schema"] == pairs_schema()


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("builder-model-server")
    limits = ModelServerSettings(max_input_tokens=512, max_total_tokens=1024, dtype="float32")
    server = ModelServer.load(Settings(broker="memory", data_dir=root, device="cpu", model_server=limits))
    server.start()
    http = uvicorn.Server(
        uvicorn.Config(
            create_app(server), host="127.0.0.1", port=free_port(), log_level="warning", lifespan="off"
        )
    )
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not http.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{http.config.port}/v1"
    http.should_exit = True
    thread.join(timeout=30)
    server.stop()


def test_the_llm_generator_against_the_real_model_server(model_server: str) -> None:
    chunks = [
        CorpusChunk("fees.md", 0, "v", "company", f"Fees\n{FACT}"),
        CorpusChunk("office.md", 0, "v", "company", "Office\nThe head office of Larkspur is in Trieste."),
    ]
    generator = LLMGenerator.connect(model_server, "not-needed", "tgi", max_tokens=96, timeout_s=300)
    built = TrainingSetBuilder([generator], BuilderSettings(style_examples=0, raft_per_chunk=0)).build(chunks)
    # The 135M model answers within the schema (the server enforces it); whatever it wrote is
    # either kept grounded, dropped with a reason, or counted as a failure — nothing else.
    assert all(k.startswith("llm: ") for k in built.failures)
    texts = {f"{c.doc_id}#{c.position}": c.text for c in chunks}
    for example in built.examples:
        assert ungrounded_claims(example.answer, [texts[example.chunk]], example.question) == []
    assert all(d.reason in {"ungrounded", "adds nothing to the question", "duplicate"} for d in built.drops)
    assert built.examples or built.drops or sum(built.failures.values()) >= 1
