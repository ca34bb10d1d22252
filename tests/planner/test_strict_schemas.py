"""Every schema the planner sends to the primary LLM meets OpenAI's strict structured-output rules.

Checked two ways: the `openai` package's own strict conversion leaves the schema as it is (every
property required, `additionalProperties: false` everywhere), and it uses only the keywords
OpenAI's strict mode supports (platform.openai.com, "Structured Outputs", supported schemas).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from openai.lib._pydantic import _ensure_strict_json_schema, to_strict_json_schema

from loraswarm.services.planner.extract import Phrased, phrased_schema
from loraswarm.services.planner.plan import Plan, plan_schema
from loraswarm.shared.tenants import TenantRegistry

EXAMPLES = Path(__file__).parents[2] / "examples" / "tenants"
SUPPORTED = {
    "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf",
    "$defs", "$ref", "description", "title", "pattern", "format", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems",
}  # fmt: skip


def problems(schema: Any, path: str = "$") -> list[str]:
    found: list[str] = []
    if isinstance(schema, dict):
        found += [f"{path}: `{k}` is not supported in strict mode" for k in schema if k not in SUPPORTED]
        if schema.get("type") == "object" or "properties" in schema:
            if schema.get("additionalProperties") is not False:
                found.append(f"{path}: needs additionalProperties: false")
            if sorted(schema.get("required", [])) != sorted(schema.get("properties", {})):
                found.append(f"{path}: every property must be required")
        for key, value in schema.items():
            if key in ("properties", "$defs"):
                for name, sub in value.items():
                    found += problems(sub, f"{path}.{name}")
            elif key in ("items", "anyOf"):
                found += problems(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            found += problems(sub, f"{path}[{i}]")
    return found


def sent_schemas() -> dict[str, dict[str, Any]]:
    registry = TenantRegistry(EXAMPLES)
    schemas = {f"plan:{t}": plan_schema(tenant) for t in ("acme", "globex") if (tenant := registry.get(t))}
    schemas["answer"] = phrased_schema()
    return schemas


@pytest.mark.parametrize("name", sorted(sent_schemas()))
def test_the_schema_is_strict_by_openais_own_conversion(name: str) -> None:
    schema = sent_schemas()[name]
    assert problems(schema) == []
    converted = _ensure_strict_json_schema(copy.deepcopy(schema), path=(), root=copy.deepcopy(schema))
    assert converted == schema


def test_the_schemas_are_the_models_strict_schemas() -> None:
    assert phrased_schema() == to_strict_json_schema(Phrased)
    tenant = TenantRegistry(EXAMPLES).get("acme")
    assert tenant is not None
    base = to_strict_json_schema(Plan)
    sent = plan_schema(tenant)
    sent["properties"]["specialists"]["items"].pop("enum")
    sent["properties"]["specialists"].pop("maxItems")
    assert sent == base


def test_the_checker_finds_what_strict_mode_refuses() -> None:
    loose = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 5}}, "required": []}
    assert problems(loose) == [
        "$: needs additionalProperties: false",
        "$: every property must be required",
        "$.a: `maxLength` is not supported in strict mode",
    ]
