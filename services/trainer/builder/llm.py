"""Questions and answers written by the primary LLM, through the `openai` client with strict
structured output (OpenAI "Structured Outputs": the schema is `to_strict_json_schema` of
`GeneratedPairs`, sent with `strict: true`).

In production a GPT-4o-class model writes far more varied phrasings than the extractor can; the
embedded 135M model writes poor data, which is why it is off by default there (see
`BuilderSettings.llm`). Whatever comes back is distrusted: an answer that is not JSON, empty,
off the schema, or late is counted by reason and skipped, and the build goes on; a pair whose
answer says more than its chunk is dropped by the builder's grounding check, like any other.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from openai import APITimeoutError, OpenAI
from pydantic import BaseModel, ConfigDict, ValidationError

from loraswarm.services.trainer.builder.model import Candidate, GeneratorOutput
from loraswarm.services.trainer.corpus import CorpusChunk


class GeneratedPair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["fact", "process"]
    question: str
    answer: str


class GeneratedPairs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pairs: list[GeneratedPair]


def pairs_schema() -> dict[str, Any]:
    from openai.lib._pydantic import to_strict_json_schema

    return to_strict_json_schema(GeneratedPairs)


def instructions(phrasings: int) -> str:
    return (
        "You write training data for a company's assistant from one passage of its documents. "
        "Write question-answer pairs as JSON: for every fact the passage states, "
        f"{phrasings} differently phrased questions, at least one asked the other way round (from "
        "the value to what it is), kind `fact`, each answered with one sentence; for every list of "
        "steps, a question such as 'How do I ...?' answered with the steps numbered, one per line, "
        "in the passage's order, kind `process`. Use only what the passage says and copy names, "
        "numbers and codes exactly."
    )


class LLMGenerator:
    """The primary LLM as a generator (see the module docstring)."""

    name = "llm"

    def __init__(
        self,
        client: OpenAI,
        model: str,
        *,
        phrasings: int = 3,
        max_tokens: int = 512,
        timeout_s: float = 30.0,
    ) -> None:
        self.client = client
        self.model = model
        self.phrasings = phrasings
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.schema = pairs_schema()

    @classmethod
    def connect(cls, base_url: str, api_key: str, model: str, **kw: Any) -> LLMGenerator:
        timeout = float(kw.get("timeout_s", 30.0))
        return cls(OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0), model, **kw)

    def generate(self, chunk: CorpusChunk) -> GeneratorOutput:
        out = GeneratorOutput()
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": instructions(self.phrasings)},
                    {"role": "user", "content": f"Passage:\n{chunk.text}"},
                ],
                max_tokens=self.max_tokens,
                temperature=0.0,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "generated_pairs", "schema": self.schema, "strict": True},
                },
                timeout=self.timeout_s,
            )
        except APITimeoutError:
            out.failures["timeout"] += 1
            return out
        except Exception as exc:  # a refused or broken call: this chunk gets no LLM pairs
            out.failures[f"call failed ({type(exc).__name__})"] += 1
            return out
        choice = response.choices[0] if response.choices else None
        text = ((choice.message.content if choice else None) or "").strip()
        if not text:
            out.failures["empty"] += 1
            return out
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            out.failures["not JSON"] += 1
            return out
        try:
            parsed = GeneratedPairs.model_validate(value)
        except ValidationError:
            out.failures["off-schema"] += 1
            return out
        pairs = [p for p in parsed.pairs if p.question.strip() and p.answer.strip()]
        if not pairs:
            out.failures["empty"] += 1
            return out
        out.candidates = [
            Candidate(p.kind, p.question.strip(), p.answer.strip(), chunk, self.name) for p in pairs
        ]
        return out
