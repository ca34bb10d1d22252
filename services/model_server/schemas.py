"""Request and response bodies, field for field as TGI (router/src/lib.rs) and the OpenAI chat API have them.

Unknown fields are ignored, as TGI's serde structs ignore them. Types are checked here; the
value rules (`top_p` inside (0, 1) and the rest) live in `validation.py`, which answers with
TGI's own messages.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------- TGI


class Grammar(Body):
    type: Literal["json", "json_object", "regex", "json_schema"]
    value: Any = None


class GenerateParameters(Body):
    adapter_id: str | None = None
    best_of: NonNegativeInt | None = None
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = None
    grammar: Grammar | None = None
    max_new_tokens: NonNegativeInt | None = None
    # Not TGI's: OpenAI's presence penalty, for the chat route (see chat_routes.py).
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    # Not TGI's: no n-gram of the generated text twice (sampling.py); 0 or absent: off.
    no_repeat_ngram_size: NonNegativeInt | None = None
    return_full_text: bool | None = None
    seed: NonNegativeInt | None = None
    stop: list[str] = Field(default_factory=list)
    temperature: float | None = None
    top_k: int | None = None
    top_n_tokens: NonNegativeInt | None = None
    top_p: float | None = None
    truncate: NonNegativeInt | None = None
    typical_p: float | None = None
    watermark: bool = False


class GenerateRequest(Body):
    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    add_special_tokens: bool = True


class CompatGenerateRequest(GenerateRequest):
    stream: bool = False


class Token(Body):
    id: int
    text: str
    logprob: float
    special: bool


class PrefillToken(Body):
    id: int
    text: str
    logprob: float | None


FinishReason = Literal["length", "eos_token", "stop_sequence"]


class BestOfSequence(Body):
    generated_text: str
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken]
    tokens: list[Token]
    top_tokens: list[list[Token]] = Field(default_factory=list)


class Details(Body):
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None
    # An extension: TGI gives the prompt's length only in stream details. Here a client can count
    # its input tokens without `decoder_input_details`, which costs the LM head and a softmax over
    # every prompt token (a quarter of the demo's engine time when every specialist asked for it).
    input_length: int | None = None
    prefill: list[PrefillToken]
    tokens: list[Token]
    best_of_sequences: list[BestOfSequence] | None = None
    top_tokens: list[list[Token]] = Field(default_factory=list)


class GenerateResponse(Body):
    generated_text: str
    details: Details | None = None


class StreamDetails(Body):
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None
    input_length: int


class StreamResponse(Body):
    index: int
    token: Token
    top_tokens: list[Token]
    generated_text: str | None
    details: StreamDetails | None


class SimpleToken(Body):
    id: int
    text: str
    start: int
    stop: int


# ---------------------------------------------------------------- OpenAI chat


class TextPart(Body):
    type: Literal["text"] = "text"
    text: str


class Message(Body):
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JsonSchemaFormat(Body):
    name: str | None = None
    schema_: Any = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Body):
    """TGI's `{"type", "value"}` and OpenAI's `{"type": "json_schema", "json_schema": {...}}` alike."""

    type: Literal["text", "json", "json_object", "regex", "json_schema"]
    value: Any = None
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(Body):
    include_usage: bool = False


class ChatRequest(Body):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    # Not OpenAI's: see GenerateParameters.
    no_repeat_ngram_size: NonNegativeInt | None = None
    logprobs: bool | None = None
    top_logprobs: NonNegativeInt | None = None
    max_tokens: NonNegativeInt | None = None
    max_completion_tokens: NonNegativeInt | None = None
    n: int | None = None
    seed: NonNegativeInt | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
