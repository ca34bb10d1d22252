"""The question file: JSONL, one `EvalQuestion` per line (the format README.md documents).

Required: `tenant`, `user` (null for a company question), `kind`, `question`, and what the kind is
scored against — `answers` (fact), `steps` (process), `style_rules` (style). Optional, for
questions that need more than one piece: `all_of` (a list of answer lists; every one must be
matched, each by any of its accepted strings) and `sources` (which data sources the answer needs,
e.g. `["user", "company"]`), which the report uses to show two-source questions on their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loraswarm.eval.scoring import parse_rule
from loraswarm.shared.ids import TENANT_ID

Kind = Literal["fact", "process", "style"]


class QuestionFileError(Exception):
    """The question file cannot be used; the message names the line and what to fix."""


class EvalQuestion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default="", description="Stable id; `<tenant>-<line>` when absent.")
    tenant: str = Field(pattern=rf"^{TENANT_ID}$", description="The corpus folder's tenant.")
    user: str | None = Field(default=None, description="The asking user (null: a company question).")
    kind: Kind
    question: str = Field(min_length=1, max_length=4000)
    answers: list[str] = Field(default_factory=list, description="Accepted answers (fact): any one.")
    all_of: list[list[str]] = Field(
        default_factory=list, description="Fact parts that must all be present, each by any alternative."
    )
    steps: list[str] = Field(default_factory=list, description="Gold steps in order (process).")
    style_rules: list[str] = Field(default_factory=list, description="Machine-checkable rules (style).")
    sources: list[str] = Field(default_factory=list, description="Data sources the answer needs.")

    @model_validator(mode="after")
    def _scorable(self) -> EvalQuestion:
        if self.kind == "fact" and not (self.answers or self.all_of):
            raise ValueError("a fact question needs `answers` (or `all_of`)")
        if self.kind == "process" and len(self.steps) < 2:
            raise ValueError("a process question needs at least two `steps`")
        if self.kind == "style":
            if not self.style_rules:
                raise ValueError("a style question needs `style_rules`")
            for rule in self.style_rules:
                parse_rule(rule)
        return self

    @property
    def two_source(self) -> bool:
        return len(set(self.sources)) >= 2


def read_questions(path: Path) -> list[EvalQuestion]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise QuestionFileError(f"cannot read the question file {path}: {exc.strerror or exc}") from exc
    questions: list[EvalQuestion] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if isinstance(raw, dict) and not raw.get("id"):
                raw["id"] = f"{raw.get('tenant', 'q')}-{number}"
            questions.append(EvalQuestion.model_validate(raw))
        except (ValueError, ValidationError) as exc:
            first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise QuestionFileError(f"{path}:{number}: {first}") from exc
    if not questions:
        raise QuestionFileError(f"{path} holds no questions")
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise QuestionFileError(f"{path}: question ids must be unique")
    return questions


def write_questions(path: Path, questions: list[EvalQuestion]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(q.model_dump_json(exclude_defaults=True) + "\n" for q in questions))
