"""TGI's validation rules (router/src/validation.rs), in TGI's order and with TGI's messages.

A request that breaks one is answered 422 `{"error": "Input validation error: <message>",
"error_type": "validation"}`. Prompts are tokenized here: `truncate` keeps the last tokens, and
a prompt that is still too long, or too long together with `max_new_tokens`, is refused.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from loraswarm.services.model_server.errors import ValidationFailed
from loraswarm.services.model_server.grammar import GrammarError, GrammarSpec, json_schema_spec
from loraswarm.services.model_server.sampling import SamplingParams
from loraswarm.services.model_server.schemas import GenerateParameters, Grammar
from loraswarm.shared.settings import ModelServerSettings

# TGI generates at most this many tokens at a time when no `max_new_tokens` is given.
DEFAULT_GENERATION_LENGTH = 1024


@dataclass(frozen=True)
class ValidRequest:
    inputs: str
    input_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    stop: list[str]
    grammar: GrammarSpec | None
    top_n_tokens: int
    best_of: int
    details: bool
    decoder_input_details: bool
    return_full_text: bool
    adapter_id: str | None

    @property
    def input_length(self) -> int:
        return len(self.input_ids)


def validate(
    inputs: str,
    p: GenerateParameters,
    *,
    limits: ModelServerSettings,
    tokenizer: Any,
    add_special_tokens: bool = True,
    stream: bool = False,
    default_return_full_text: bool = False,
) -> ValidRequest:
    """Check a TGI request and tokenize its prompt; `ValidationFailed` with TGI's message if it breaks a rule."""
    best_of = p.best_of if p.best_of is not None else 1
    if best_of == 0 or best_of > limits.max_best_of:
        raise ValidationFailed(f"`best_of` must be > 0 and <= {limits.max_best_of}. Given: {best_of}")
    if stream and best_of != 1:
        raise ValidationFailed("`best_of` != 1 is not supported when streaming tokens")
    if stream and p.decoder_input_details:
        raise ValidationFailed("`decoder_input_details` == true is not supported when streaming tokens")
    sampling = (
        p.do_sample
        or p.temperature is not None
        or p.top_k is not None
        or p.top_p is not None
        or p.typical_p is not None
    )
    if best_of > 1 and not sampling:
        raise ValidationFailed("you must use sampling when `best_of` is > 1")
    temperature = 1.0 if p.temperature is None else p.temperature
    if temperature <= 0.0:
        raise ValidationFailed("`temperature` must be strictly positive")
    repetition_penalty = 1.0 if p.repetition_penalty is None else p.repetition_penalty
    if repetition_penalty <= 0.0:
        raise ValidationFailed("`repetition_penalty` must be strictly positive")
    frequency_penalty = 0.0 if p.frequency_penalty is None else p.frequency_penalty
    if not -2.0 <= frequency_penalty <= 2.0:
        raise ValidationFailed("`frequency_penalty` must be >= -2.0 and <= 2.0")
    presence_penalty = 0.0 if p.presence_penalty is None else p.presence_penalty
    if not -2.0 <= presence_penalty <= 2.0:
        raise ValidationFailed("`presence_penalty` must be >= -2.0 and <= 2.0")
    top_p = 1.0 if p.top_p is None else p.top_p
    if p.top_p is not None and not 0.0 < top_p < 1.0:
        raise ValidationFailed("`top_p` must be > 0.0 and < 1.0")
    typical_p = 1.0 if p.typical_p is None else p.typical_p
    if p.typical_p is not None and not 0.0 < typical_p < 1.0:
        raise ValidationFailed("`typical_p` must be > 0.0 and < 1.0")
    top_k = 0 if p.top_k is None else p.top_k
    if p.top_k is not None and top_k <= 0:
        raise ValidationFailed("`top_k` must be strictly positive")
    if p.max_new_tokens == 0:
        raise ValidationFailed("`max_new_tokens` must be strictly positive")
    if len(p.stop) > limits.max_stop_sequences:
        raise ValidationFailed(
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(p.stop)}"
        )
    if p.seed is not None and best_of > 1:
        raise ValidationFailed("`seed` must not be set when `best_of` > 1")
    seed = p.seed if p.seed is not None else random.getrandbits(63)
    top_n_tokens = p.top_n_tokens or 0
    if top_n_tokens > limits.max_top_n_tokens:
        raise ValidationFailed(
            f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {top_n_tokens}"
        )
    if not inputs:
        raise ValidationFailed("`inputs` cannot be empty")
    if p.truncate is not None and (p.truncate == 0 or p.truncate > limits.max_input_tokens):
        raise ValidationFailed(
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. Given: {p.truncate}"
        )
    if p.watermark:
        raise ValidationFailed("`watermark` is not supported by this server")

    ids: list[int] = tokenizer(inputs, add_special_tokens=add_special_tokens)["input_ids"]
    if p.truncate is not None:
        ids = ids[-p.truncate :]  # TGI truncates on the left: the end of the prompt is kept
    input_length = len(ids)
    if p.max_new_tokens is not None:
        max_new_tokens = p.max_new_tokens
    else:
        max_new_tokens = min(max(limits.max_total_tokens - input_length, 0), DEFAULT_GENERATION_LENGTH)
    if input_length + max_new_tokens > limits.max_total_tokens:
        raise ValidationFailed(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )
    if input_length > limits.max_input_tokens:
        raise ValidationFailed(
            f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_length}"
        )

    return ValidRequest(
        inputs=inputs,
        input_ids=ids,
        params=SamplingParams(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            typical_p=typical_p,
            repetition_penalty=repetition_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            no_repeat_ngram_size=p.no_repeat_ngram_size or 0,
            do_sample=p.do_sample,
            seed=seed,
        ),
        max_new_tokens=max_new_tokens,
        stop=list(p.stop),
        grammar=grammar_spec(p.grammar),
        top_n_tokens=top_n_tokens,
        best_of=best_of,
        details=p.details or p.decoder_input_details,
        decoder_input_details=p.decoder_input_details,
        return_full_text=p.return_full_text if p.return_full_text is not None else default_return_full_text,
        adapter_id=p.adapter_id,
    )


def grammar_spec(grammar: Grammar | None) -> GrammarSpec | None:
    """TGI's grammar types: `json` (alias `json_object`) with a schema, `json_schema` with {name, schema}, `regex`."""
    if grammar is None:
        return None
    try:
        if grammar.type in ("json", "json_object"):
            if grammar.value is None:
                return GrammarSpec("any_json", "")
            return json_schema_spec(grammar.value)
        if grammar.type == "json_schema":
            value = grammar.value
            if not isinstance(value, dict) or "schema" not in value:
                raise GrammarError('grammar is not valid: `json_schema` needs a value {"name", "schema"}')
            return json_schema_spec(value["schema"])
        if not isinstance(grammar.value, str):
            raise GrammarError("grammar is not valid: a regex grammar needs a string value")
        return GrammarSpec("regex", grammar.value)
    except GrammarError as exc:
        raise ValidationFailed(str(exc)) from exc
