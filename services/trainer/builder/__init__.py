"""The training-set builder: one scope's chunks → supervised chat examples, each grounded in a
named chunk of that scope (facts asked several ways and both directions, processes as ordered
steps, replies in the scope's own style, retrieval-aware examples in the specialists' prompt).

Why: an adapter trained on raw document text learns to continue documents, not to answer
questions about them (DESIGN.md §4a; ../shared/REFERENCE.md, "Teaching an adapter a tenant").

One interface, `TrainingSetBuilder.build(chunks) -> BuiltSet`, with two generators behind it:
`StructureExtractor` (deterministic, from document structure) and `LLMGenerator` (the primary
LLM through the `openai` client, strict structured output). `from_settings` picks them.
"""

from __future__ import annotations

from collections.abc import Sequence

from loraswarm.services.trainer.builder.build import TrainingSetBuilder, ground
from loraswarm.services.trainer.builder.extractor import StructureExtractor
from loraswarm.services.trainer.builder.llm import LLMGenerator
from loraswarm.services.trainer.builder.model import (
    KINDS,
    BuiltExample,
    BuiltSet,
    Candidate,
    Drop,
    Generator,
    GeneratorOutput,
    Kind,
    chunk_key,
)
from loraswarm.shared.settings import Settings

__all__ = [
    "KINDS",
    "BuiltExample",
    "BuiltSet",
    "Candidate",
    "Drop",
    "Generator",
    "GeneratorOutput",
    "Kind",
    "LLMGenerator",
    "StructureExtractor",
    "TrainingSetBuilder",
    "chunk_key",
    "from_settings",
    "ground",
    "llm_enabled",
]


def llm_enabled(settings: Settings) -> bool:
    """`auto`: on when the primary LLM is a configured endpoint, not the embedded model server's
    135M base model (`tgi`), whose generated data is poorer than the extractor's."""
    choice = settings.trainer.builder.llm
    if choice == "auto":
        return not settings.orchestration.embedded_primary
    return choice == "on"


def from_settings(settings: Settings, instructions: Sequence[str] = ()) -> TrainingSetBuilder:
    b = settings.trainer.builder
    generators: list[Generator] = []
    if b.extractor:
        generators.append(StructureExtractor(phrasings=b.phrasings))
    if llm_enabled(settings):
        o = settings.orchestration
        generators.append(
            LLMGenerator.connect(
                o.primary_llm_base_url,
                o.primary_llm_api_key.get_secret_value(),
                o.primary_llm_model,
                phrasings=b.phrasings,
                max_tokens=b.llm_max_tokens,
                timeout_s=b.llm_timeout_s,
            )
        )
    return TrainingSetBuilder(generators, b, instructions)
