"""Real clients, unchanged, against the running server: huggingface_hub and openai (TGI's own: test_tgi_client.py)."""

from __future__ import annotations

import json
import re
from typing import Any

import huggingface_hub
import jsonschema  # type: ignore[import-untyped]
import openai
import pytest
from huggingface_hub import (
    ChatCompletionInputJSONSchema,
    ChatCompletionInputResponseFormatJSONSchema,
    InferenceClient,
    TextGenerationInputGrammarType,
)
from huggingface_hub.errors import HfHubHTTPError
from openai.types.chat import ChatCompletionMessageParam

from tests.model_server.conftest import Served

PERSON = {
    "type": "object",
    # Bounded, as structured output for a small model should be: the grammar keeps the schema's
    # property order, and an unbounded integer lets the model write digits until max_tokens.
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture
def hub(served: Served) -> InferenceClient:
    return InferenceClient(base_url=served.url, headers=served.headers("acme"), timeout=120)


@pytest.fixture
def oai(served: Served) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{served.url}/v1",
        api_key="not-needed",
        default_headers=served.headers("acme"),
        max_retries=0,
        timeout=120,
    )


# ---------------------------------------------------------------- huggingface_hub


def test_hub_text_generation_with_an_adapter_and_details(hub: InferenceClient) -> None:
    prompt = "Our refund policy is"
    out = hub.text_generation(
        prompt, adapter_id="acme/support", max_new_tokens=8, details=True, return_full_text=False
    )
    assert out.details is not None
    assert out.details.generated_tokens == 8 == len(out.details.tokens)
    assert out.details.finish_reason == "length"
    assert "".join(t.text for t in out.details.tokens) == out.generated_text
    assert all(t.logprob <= 0 for t in out.details.tokens)
    base = hub.text_generation(prompt, max_new_tokens=8, details=True, return_full_text=False)
    assert [t.id for t in base.details.tokens] != [t.id for t in out.details.tokens]  # type: ignore[union-attr]
    # POST / prepends the prompt by default, as TGI does for text-generation models.
    assert (
        hub.text_generation(prompt, adapter_id="acme/support", max_new_tokens=8)
        == prompt + out.generated_text
    )


def test_hub_streams_tokens_that_add_up_to_the_text(hub: InferenceClient) -> None:
    events = list(
        hub.text_generation(
            "List three colors:",
            adapter_id="acme/user-7",
            max_new_tokens=12,
            stream=True,
            details=True,
            return_full_text=False,
        )
    )
    assert len(events) == 12
    assert all(e.details is None and e.generated_text is None for e in events[:-1])
    last = events[-1]
    assert last.details is not None and last.details.generated_tokens == 12
    assert last.generated_text == "".join(e.token.text for e in events)
    plain = list(
        hub.text_generation("List three colors:", adapter_id="acme/user-7", max_new_tokens=12, stream=True)
    )
    assert "".join(plain) == last.generated_text


def test_hub_grammar_json_schema_and_regex(hub: InferenceClient) -> None:
    text = hub.text_generation(
        "Describe a customer as JSON:",
        adapter_id="acme/support",
        max_new_tokens=60,
        grammar=TextGenerationInputGrammarType(type="json", value=PERSON),
        return_full_text=False,
    )
    jsonschema.validate(json.loads(text), PERSON)
    phone = hub.text_generation(
        "Call us at",
        max_new_tokens=20,
        grammar=TextGenerationInputGrammarType(type="regex", value=r"\+1 [0-9]{3}-[0-9]{4}"),
        return_full_text=False,
    )
    assert re.fullmatch(r"\+1 [0-9]{3}-[0-9]{4}", phone), phone


def test_hub_chat_completion_selects_the_adapter_with_model(hub: InferenceClient) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "How do I reset my password?"}]
    tuned = hub.chat_completion(messages, model="acme/support", max_tokens=10, temperature=0)
    base = hub.chat_completion(messages, max_tokens=10, temperature=0)
    assert tuned.model == "acme/support"
    assert tuned.choices[0].message.content != base.choices[0].message.content
    assert tuned.usage.completion_tokens == 10 and tuned.choices[0].finish_reason == "length"
    chunks = list(
        hub.chat_completion(messages, model="acme/support", max_tokens=10, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == tuned.choices[0].message.content
    shaped = hub.chat_completion(
        [{"role": "user", "content": "Give me a customer."}],
        model="acme/support",
        max_tokens=60,
        temperature=0,
        response_format=ChatCompletionInputResponseFormatJSONSchema(
            type="json_schema", json_schema=ChatCompletionInputJSONSchema(name="person", schema=PERSON)
        ),
    )
    jsonschema.validate(json.loads(shaped.choices[0].message.content or ""), PERSON)


def test_hub_raises_the_typed_errors(hub: InferenceClient, served: Served) -> None:
    with pytest.raises(huggingface_hub.errors.ValidationError, match=r"`top_p` must be > 0.0 and < 1.0"):
        hub.text_generation("hi", top_p=1.5, max_new_tokens=2)
    with pytest.raises(huggingface_hub.errors.ValidationError, match="`top_k` must be strictly positive"):
        list(hub.text_generation("hi", top_k=-1, max_new_tokens=2, stream=True))
    # Error types TGI does not have arrive as UnknownError, caused by the HTTP error with the status.
    with pytest.raises(
        huggingface_hub.errors.UnknownError, match="adapter 'acme/nope' does not exist"
    ) as unknown:
        hub.text_generation("hi", adapter_id="acme/nope", max_new_tokens=2)
    assert _status(unknown.value) == 404
    foreign = InferenceClient(base_url=served.url, headers=served.headers("globex"))
    with pytest.raises(
        huggingface_hub.errors.UnknownError, match="does not belong to tenant 'globex'"
    ) as refused:
        foreign.text_generation("hi", adapter_id="acme/support", max_new_tokens=2)
    assert _status(refused.value) == 403


def _status(error: BaseException) -> int:
    cause = error.__cause__
    assert isinstance(cause, HfHubHTTPError) and cause.response is not None
    return int(cause.response.status_code)


# ---------------------------------------------------------------- openai


def test_openai_chat_with_an_adapter_streaming_and_structured(oai: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Which plan should a small team pick?"}
    ]
    tuned = oai.chat.completions.create(model="acme/support", messages=messages, max_tokens=10, temperature=0)
    assert tuned.model == "acme/support"
    assert tuned.usage is not None and tuned.usage.completion_tokens == 10
    stream = oai.chat.completions.create(
        model="acme/support",
        messages=messages,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == tuned.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    structured = oai.chat.completions.create(
        model="acme/support",
        messages=[{"role": "user", "content": "A customer record please."}],
        max_tokens=60,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": True},
        },
    )
    jsonschema.validate(json.loads(structured.choices[0].message.content or ""), PERSON)
    base = oai.chat.completions.create(model="tgi", messages=messages, max_tokens=10, temperature=0)
    assert base.choices[0].message.content != tuned.choices[0].message.content


def test_openai_errors(oai: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="acme/missing", messages=messages, max_tokens=2)
    assert missing.value.body == "adapter 'acme/missing' does not exist"
    assert missing.value.response.json()["error_type"] == "adapter_not_found"
    with pytest.raises(openai.PermissionDeniedError):
        oai.chat.completions.create(model="globex/support", messages=messages, max_tokens=2)
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        oai.chat.completions.create(model="tgi", messages=messages, max_tokens=2, top_p=0.0)
    assert invalid.value.body == "Input validation error: `top_p` must be > 0.0 and < 1.0"
