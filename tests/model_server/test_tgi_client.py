"""TGI's own Python client, `text-generation` 0.7, unchanged, against the running server.

Its package pins huggingface_hub<1, which this project cannot have (transformers 5 needs >=1), so
it is installed with `pip install --no-deps text-generation==0.7.0` (plus `aiohttp`, which it
imports); it only uses huggingface_hub for the hosted Inference API, not for `Client`. The client
has no `adapter_id` parameter: it reaches the base model and the chat route only.
"""

from __future__ import annotations

import json

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.model_server.conftest import Served
from tests.model_server.test_clients import PERSON

text_generation = pytest.importorskip(
    "text_generation",
    reason="pip install --no-deps text-generation==0.7.0 aiohttp (see the module docstring)",
)


def test_tgi_client_generate_stream_and_errors(served: Served) -> None:
    client = text_generation.Client(served.url, headers=served.headers("acme"), timeout=120)
    out = client.generate("The weather today is", max_new_tokens=6, decoder_input_details=True)
    assert out.details.generated_tokens == 6 and out.details.finish_reason == "length"
    assert out.details.prefill[0].logprob is None and all(
        t.logprob is not None for t in out.details.prefill[1:]
    )
    assert "".join(t.text for t in out.details.tokens) == out.generated_text
    # The extension: the prompt's length without every prompt token's logprob.
    body = {"inputs": "The weather today is", "parameters": {"max_new_tokens": 6, "details": True}}
    plain = httpx.post(
        f"{served.url}/generate", json=body, headers=served.headers("acme"), timeout=120
    ).json()
    assert plain["details"]["prefill"] == [] and plain["details"]["input_length"] == len(out.details.prefill)
    streamed = list(client.generate_stream("The weather today is", max_new_tokens=6))
    assert streamed[-1].generated_text == out.generated_text
    assert streamed[-1].details is not None and streamed[-1].details.generated_tokens == 6
    shaped = client.generate(
        "A customer:",
        max_new_tokens=60,
        grammar=text_generation.types.Grammar(type=text_generation.types.GrammarType.Json, value=PERSON),
    )
    jsonschema.validate(json.loads(shaped.generated_text), PERSON)
    with pytest.raises(
        text_generation.errors.ValidationError, match="`temperature` must be strictly positive"
    ):
        client.generate("hi", temperature=0.0, max_new_tokens=2)
    with pytest.raises(
        text_generation.errors.ValidationError, match="`stop` supports up to 4 stop sequences"
    ):
        client.generate("hi", stop_sequences=["a", "b", "c", "d", "e"], max_new_tokens=2)


def test_tgi_client_chat(served: Served) -> None:
    client = text_generation.Client(served.url, timeout=120)
    out = client.chat(
        [text_generation.types.Message(role="user", content="Say hello")], max_tokens=8, temperature=0
    )
    assert out.choices[0].message.content
    assert out.usage["completion_tokens"] <= 8
