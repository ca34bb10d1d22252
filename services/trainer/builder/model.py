"""What the training-set builder makes: candidates from a generator, kept examples, drops, the report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Protocol

from loraswarm.services.trainer.corpus import CorpusChunk
from loraswarm.services.trainer.examples import Message

# What a generator writes (facts, processes) and what the builder derives from them (style, raft).
Kind = Literal["fact", "process", "style", "raft"]
KINDS: tuple[Kind, ...] = ("fact", "process", "style", "raft")


def chunk_key(chunk: CorpusChunk) -> str:
    """How an example names the chunk it is grounded in: `<doc_id>#<position>`."""
    return f"{chunk.doc_id}#{chunk.position}"


@dataclass(frozen=True)
class Candidate:
    """A question and answer a generator wrote from one chunk; not yet checked."""

    kind: Literal["fact", "process"]
    question: str
    answer: str
    chunk: CorpusChunk
    generator: str


@dataclass(frozen=True)
class BuiltExample:
    """One supervised chat example, grounded in `chunk` (and, for style, in the style rules' chunk)."""

    kind: Kind
    messages: tuple[Message, ...]
    chunk: str  # chunk_key of the source
    generator: str
    also: tuple[str, ...] = ()  # further chunks it draws on (a style example's rules)

    @property
    def question(self) -> str:
        return next(m.content for m in self.messages if m.role == "user")

    @property
    def answer(self) -> str:
        return next(m.content for m in reversed(self.messages) if m.role == "assistant")


@dataclass(frozen=True)
class Drop:
    kind: Kind
    reason: str  # a short category: "ungrounded", "adds nothing", "duplicate", ...
    chunk: str
    detail: str = ""


@dataclass
class GeneratorOutput:
    """What one generator made of one chunk: candidates, and failures counted by reason."""

    candidates: list[Candidate] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)


class Generator(Protocol):
    """Writes fact and process candidates from one chunk of a scope. Never raises for bad output:
    a failure is counted in `GeneratorOutput.failures` and the build goes on."""

    name: str

    def generate(self, chunk: CorpusChunk) -> GeneratorOutput: ...


@dataclass
class BuiltSet:
    """The examples of one scope, what was dropped and why, and each generator's failures."""

    examples: list[BuiltExample] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)  # "<generator>: <reason>"
    chunks: int = 0
    seconds: float = 0.0

    def kept(self) -> Counter[str]:
        return Counter(e.kind for e in self.examples)

    def dropped(self) -> Counter[tuple[str, str]]:
        return Counter((d.kind, d.reason) for d in self.drops)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for a job's metrics: `built_<kind>`, `dropped_<kind>`, `generator_failures`."""
        kept, out = self.kept(), Counter(d.kind for d in self.drops)
        return {
            **{f"built_{k}": float(kept[k]) for k in KINDS},
            **{f"dropped_{k}": float(out[k]) for k in KINDS},
            "generator_failures": float(sum(self.failures.values())),
            "build_seconds": self.seconds,
        }
