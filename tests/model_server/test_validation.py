"""Every TGI validation rule answered with TGI's status, error type and message; sampling options honoured.

The test server has `max_input_tokens` 256, `max_total_tokens` 512 (conftest.small_limits).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.model_server.conftest import Served

RULES: list[tuple[dict[str, Any], str]] = [
    ({"temperature": 0.0}, "`temperature` must be strictly positive"),
    ({"temperature": -0.5}, "`temperature` must be strictly positive"),
    ({"repetition_penalty": 0.0}, "`repetition_penalty` must be strictly positive"),
    ({"frequency_penalty": 2.5}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ({"frequency_penalty": -2.01}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ({"top_p": 0.0}, "`top_p` must be > 0.0 and < 1.0"),
    ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
    ({"typical_p": 1.0}, "`typical_p` must be > 0.0 and < 1.0"),
    ({"typical_p": 0.0}, "`typical_p` must be > 0.0 and < 1.0"),
    ({"top_k": 0}, "`top_k` must be strictly positive"),
    ({"top_k": -3}, "`top_k` must be strictly positive"),
    ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
    ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
    ({"best_of": 3, "do_sample": True}, "`best_of` must be > 0 and <= 2. Given: 3"),
    ({"best_of": 2, "do_sample": True, "seed": 7}, "`seed` must not be set when `best_of` > 1"),
    ({"top_n_tokens": 6}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    ({"truncate": 0}, "`truncate` must be strictly positive and less than 256. Given: 0"),
    ({"truncate": 257}, "`truncate` must be strictly positive and less than 256. Given: 257"),
    (
        {"max_new_tokens": 510},
        "`inputs` tokens + `max_new_tokens` must be <= 512. Given: 3 `inputs` tokens and 510 `max_new_tokens`",
    ),
    (
        {"grammar": {"type": "json", "value": {"type": "object"}}},
        "grammar is not valid: Grammar must have a 'properties' field",
    ),
    (
        {"grammar": {"type": "json", "value": "{not json"}},
        "grammar is not valid: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    ),
    (
        {"grammar": {"type": "json", "value": {"properties": {"a": {"type": "nonsense"}}}}},
        "grammar is not valid: 'nonsense' is not valid under any of the given schemas",
    ),
    ({"grammar": {"type": "json", "value": 5}}, "grammar is not supported"),
    ({"watermark": True}, "`watermark` is not supported by this server"),
]
PROMPT = "Hello big world"  # 3 tokens


@pytest.fixture
def http(served: Served) -> httpx.Client:
    return httpx.Client(base_url=served.url, timeout=120)


@pytest.mark.parametrize(("parameters", "message"), RULES, ids=[m[:40] for _, m in RULES])
def test_each_rule_is_a_422_with_tgis_message(
    http: httpx.Client, parameters: dict[str, Any], message: str
) -> None:
    for route in ("/generate", "/"):
        answer = http.post(route, json={"inputs": PROMPT, "parameters": parameters})
        assert answer.status_code == 422, answer.text
        assert answer.json() == {"error": f"Input validation error: {message}", "error_type": "validation"}


def test_a_bad_regex_is_refused(http: httpx.Client) -> None:
    answer = http.post(
        "/generate", json={"inputs": PROMPT, "parameters": {"grammar": {"type": "regex", "value": "(ab"}}}
    )
    assert answer.status_code == 422
    assert answer.json()["error"].startswith("Input validation error: grammar is not valid:")


def test_empty_and_too_long_inputs(http: httpx.Client) -> None:
    empty = http.post("/generate", json={"inputs": "", "parameters": {}})
    assert (empty.status_code, empty.json()["error"]) == (
        422,
        "Input validation error: `inputs` cannot be empty",
    )
    long_prompt = " ".join(["word"] * 300)
    n = len(http.post("/tokenize", json={"inputs": long_prompt}).json())
    assert n > 256
    refused = http.post("/generate", json={"inputs": long_prompt, "parameters": {"max_new_tokens": 2}})
    assert refused.status_code == 422
    assert (
        refused.json()["error"]
        == f"Input validation error: `inputs` must have less than 256 tokens. Given: {n}"
    )
    # `truncate` keeps the last tokens, as TGI does, and the request goes through.
    kept = http.post(
        "/generate",
        json={
            "inputs": long_prompt,
            "parameters": {
                "max_new_tokens": 2,
                "truncate": 10,
                "decoder_input_details": True,
                "details": True,
            },
        },
    )
    assert kept.status_code == 200, kept.text
    assert kept.headers["x-prompt-tokens"] == "10"
    assert len(kept.json()["details"]["prefill"]) == 10


def test_bodies_of_the_wrong_shape(http: httpx.Client) -> None:
    bodies: list[dict[str, Any]] = [
        {"parameters": {}},
        {"inputs": 5},
        {"inputs": "x", "parameters": {"max_new_tokens": -1}},
    ]
    for body in bodies:
        answer = http.post("/generate", json=body)
        assert answer.status_code == 422
        assert answer.json()["error_type"] == "validation"
        assert answer.json()["error"].startswith("Failed to deserialize the JSON body into the target type: ")


def _events(
    http: httpx.Client, body: dict[str, Any], route: str = "/generate_stream"
) -> tuple[int, list[dict[str, Any]]]:
    with http.stream("POST", route, json=body) as answer:
        lines = [line for line in answer.iter_lines() if line.startswith("data:")]
        return answer.status_code, [json.loads(line[len("data:") :]) for line in lines]


def test_streams_report_validation_errors_as_events_like_tgi(http: httpx.Client) -> None:
    for parameters, message in [
        ({"top_p": 2.0}, "`top_p` must be > 0.0 and < 1.0"),
        (
            {"decoder_input_details": True},
            "`decoder_input_details` == true is not supported when streaming tokens",
        ),
        ({"best_of": 2, "do_sample": True}, "`best_of` != 1 is not supported when streaming tokens"),
    ]:
        status, events = _events(http, {"inputs": PROMPT, "parameters": parameters})
        assert status == 200
        assert events == [{"error": f"Input validation error: {message}", "error_type": "validation"}]
    status, events = _events(http, {"inputs": PROMPT, "parameters": {"top_k": 0}, "stream": True}, route="/")
    assert (status, events[0]["error_type"]) == (200, "validation")


def test_stop_sequences_seeds_best_of_and_top_tokens(http: httpx.Client) -> None:
    stop = http.post(
        "/generate",
        json={
            "inputs": "Count: 1, 2, 3,",
            "parameters": {"max_new_tokens": 20, "stop": [","], "details": True},
        },
    ).json()
    assert stop["details"]["finish_reason"] == "stop_sequence"
    assert stop["generated_text"].endswith(",")

    sampled = [
        http.post(
            "/generate",
            json={
                "inputs": PROMPT,
                "parameters": {"max_new_tokens": 8, "do_sample": True, "seed": 42, "details": True},
            },
        ).json()
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    assert sampled[0]["details"]["seed"] == 42

    best = http.post(
        "/generate",
        json={
            "inputs": PROMPT,
            "parameters": {"max_new_tokens": 4, "best_of": 2, "do_sample": True, "details": True},
        },
    ).json()
    sequences = best["details"]["best_of_sequences"]
    assert len(sequences) == 2
    assert best["generated_text"] in [s["generated_text"] for s in sequences]

    tops = http.post(
        "/generate",
        json={"inputs": PROMPT, "parameters": {"max_new_tokens": 3, "top_n_tokens": 3, "details": True}},
    ).json()["details"]
    assert [len(step) for step in tops["top_tokens"]] == [3, 3, 3]
    for token, step in zip(tops["tokens"], tops["top_tokens"], strict=True):
        assert step[0]["id"] == token["id"]  # greedy: the chosen token is the most likely one
        assert step[0]["logprob"] == pytest.approx(token["logprob"], abs=1e-5)


def test_sampling_warpers_and_penalties_run(http: httpx.Client) -> None:
    for parameters in (
        {"temperature": 0.7, "top_k": 20, "top_p": 0.9, "typical_p": 0.95, "seed": 3},
        {"repetition_penalty": 1.3, "frequency_penalty": 1.0, "presence_penalty": 0.5},
    ):
        answer = http.post(
            "/generate",
            json={"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "details": True, **parameters}},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["details"]["generated_tokens"] == 6


def test_info_health_tokenize_and_metrics(http: httpx.Client, served: Served) -> None:
    info = http.get("/info").json()
    assert info["model_id"] == "SmolLM2-135M-Instruct"
    assert (info["max_input_tokens"], info["max_total_tokens"], info["max_stop_sequences"]) == (256, 512, 4)
    assert http.get("/health").status_code == 200
    tokens = http.post("/tokenize", json={"inputs": "Hello world"}).json()
    assert [t["text"] for t in tokens] == ["Hello", " world"]
    assert tokens[1]["start"] == 5 and tokens[1]["stop"] == 11
    http.post(
        "/generate",
        json={"inputs": PROMPT, "parameters": {"max_new_tokens": 2, "adapter_id": "acme/support"}},
        headers={"X-Tenant-Id": "acme"},
    )
    metrics = http.get("/metrics").text
    for name in (
        "tgi_request_count ",
        "tgi_request_success ",
        'tgi_request_failure{err="validation"}',
        "tgi_request_duration_bucket",
        "tgi_request_queue_duration_count",
        "tgi_request_inference_duration_sum",
        "tgi_request_mean_time_per_token_duration_count",
        "tgi_request_generated_tokens_count",
        "tgi_request_input_length_count",
        "tgi_queue_size ",
        "tgi_batch_current_size ",
        'loraswarm_model_server_tokens_total{kind="output",tenant="acme"}',
        "loraswarm_model_server_adapters_resident ",
    ):
        assert name in metrics, name
    models = http.get("/v1/models", headers={"X-Tenant-Id": "acme"}).json()
    assert {m["id"] for m in models["data"]} >= {"SmolLM2-135M-Instruct", "acme/support", "acme/user-7"}
    assert not any(m["id"].startswith("globex/") for m in models["data"])


def test_requests_are_traced_with_genai_attributes_in_the_callers_trace(
    http: httpx.Client, spans: InMemorySpanExporter
) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    headers = {"X-Tenant-Id": "acme", "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 3, "adapter_id": "acme/support"}}
    assert http.post("/generate", json=body, headers=headers).status_code == 200
    finished = spans.get_finished_spans()
    (server,) = [s for s in finished if s.name == "POST /generate"]
    assert server.kind == SpanKind.SERVER
    assert f"{server.context.trace_id:032x}" == trace_id
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 200
    (span,) = [s for s in finished if s.name == "text_completion acme/support"]
    assert span.context.trace_id == server.context.trace_id
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "text_completion"
    assert attributes["gen_ai.request.model"] == "acme/support"
    assert attributes["gen_ai.response.model"] == "acme/support@1"
    assert attributes["gen_ai.usage.output_tokens"] == 3
    assert attributes["loraswarm.tenant_id"] == "acme"
    chat = {"model": "acme/nope", "messages": [{"role": "user", "content": "hi"}]}
    assert http.post("/v1/chat/completions", json=chat, headers=headers).status_code == 404
    (failed,) = [s for s in spans.get_finished_spans() if s.name == "chat acme/nope"]
    assert failed.status.status_code == StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "adapter_not_found"
