"""Instruction examples: chat pairs in JSONL, one conversation per line.

Each line is either OpenAI/Hugging Face chat format
`{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}`
(a `system` message may lead; several turns may follow) or a pair `{"prompt": "...",
"completion": "..."}`. Blank lines are skipped.

A corrupt line rejects the whole job, naming every bad line number (up to ten) and what is
wrong with it: training on the lines that happened to parse would silently teach something
other than what the tenant handed in, and the fix — correcting the file — is the tenant's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loraswarm.services.trainer.errors import CorruptData

_SHOWN = 10


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class _Conversation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[Message] = Field(min_length=2)

    @model_validator(mode="after")
    def _has_an_answer(self) -> _Conversation:
        if not any(m.role == "assistant" and m.content.strip() for m in self.messages):
            raise ValueError("no assistant message with content to learn from")
        if any(m.role == "system" for m in self.messages[1:]):
            raise ValueError("a system message may only come first")
        return self


class _Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    completion: str = Field(min_length=1)


@dataclass(frozen=True)
class ChatExample:
    messages: tuple[Message, ...]
    line: int


def parse_line(text: str) -> tuple[Message, ...]:
    """One JSONL line as a conversation; `ValueError` with a short reason if it is not one."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, expected an object with `messages`")
    try:
        if "messages" in record:
            return tuple(_Conversation.model_validate(record).messages)
        pair = _Pair.model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "line"
        raise ValueError(f"{where}: {first['msg']}") from exc
    return (Message(role="user", content=pair.prompt), Message(role="assistant", content=pair.completion))


def read_examples(path: Path, name: str | None = None) -> list[ChatExample]:
    """Every example of a JSONL file, or `CorruptData` naming the bad lines."""
    label = name or path.name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorruptData(f"{label}: cannot be read ({exc.strerror})") from exc
    examples: list[ChatExample] = []
    errors: list[str] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
            examples.append(ChatExample(parse_line(text), number))
        except UnicodeDecodeError:
            errors.append(f"line {number}: not UTF-8")
        except ValueError as exc:
            errors.append(f"line {number}: {exc}")
    if errors:
        more = f" (and {len(errors) - _SHOWN} more)" if len(errors) > _SHOWN else ""
        raise CorruptData(
            f"{label} has {len(errors)} corrupt line(s) of {len(examples) + len(errors)}; fix or remove "
            f"them and ask again — nothing was trained: " + "; ".join(errors[:_SHOWN]) + more,
            {"corrupt_lines": float(len(errors)), "valid_lines": float(len(examples))},
        )
    return examples
