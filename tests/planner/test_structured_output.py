"""The plan's and the composition's schemas, as the model server's grammar enforces them.

The 135M primary LLM rambles: what keeps its plans and compositions valid JSON is that the grammar
refuses invented fields and closes each string at its bound, within the token budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from loraswarm.services.model_server.grammar import GrammarCompiler, json_schema_spec
from loraswarm.services.planner.compose import Composition
from loraswarm.services.planner.plan import plan_schema
from loraswarm.shared import models
from loraswarm.shared.settings import Settings
from loraswarm.shared.tenants import TenantRegistry

EXAMPLES = Path(__file__).parents[2] / "examples" / "tenants"


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return AutoTokenizer.from_pretrained(models.resolve(Settings()))


@pytest.fixture(scope="module")
def compiler(tokenizer: object) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, len(tokenizer))  # type: ignore[arg-type]


def accepts(compiler: GrammarCompiler, tokenizer: object, schema: dict[str, object], text: str) -> bool:
    state = compiler.matcher(compiler.compile(json_schema_spec(schema)))
    return all(state.accept(t) for t in tokenizer.encode(text))  # type: ignore[attr-defined]


def test_the_composition_refuses_invented_fields(compiler: GrammarCompiler, tokenizer: object) -> None:
    schema = Composition.model_json_schema()
    assert accepts(compiler, tokenizer, schema, '{"recommendations": [{"title": "a", "text": "b"')
    assert not accepts(compiler, tokenizer, schema, '{"recommendations": [{"title": "a", "text": "b", "type"')


def test_a_plan_names_only_the_tenants_specialists(compiler: GrammarCompiler, tokenizer: object) -> None:
    tenant = TenantRegistry(EXAMPLES).get("acme")
    assert tenant is not None
    schema = plan_schema(tenant)
    assert accepts(compiler, tokenizer, schema, '{"specialists": ["policy"]}')
    assert not accepts(compiler, tokenizer, schema, '{"specialists": ["nobody"')
    assert not accepts(compiler, tokenizer, schema, '{"specialists": ["policy"], "question"')
