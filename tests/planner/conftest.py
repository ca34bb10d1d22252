"""Planner fixtures: a tenant configuration folder and a planner running on a given broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ACME: dict[str, Any] = {
    "tenant_id": "acme",
    "display_name": "Acme Outdoor",
    "users": ["ana", "ben"],
    "limits": {"deadline_s": 20, "max_specialists": 2, "max_handoffs": 1, "token_budget": 5000},
    "specialists": [
        {
            "name": "policy",
            "description": "Refund, warranty and shipping policies.",
            "instructions": "You are Acme's policy expert.",
            "handoffs": ["support"],
        },
        {
            "name": "support",
            "description": "Troubleshooting and customer tone.",
            "instructions": "You are Acme's support lead.",
            "adapter": "user",
        },
    ],
    "default_plan": [{"specialist": "policy"}],
    "planning": "llm",  # the tests script the primary LLM's plan
}


def write_tenant(folder: Path, config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{config['tenant_id']}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def tenants_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tenants"
    write_tenant(folder, ACME)
    write_tenant(folder, {**ACME, "tenant_id": "globex", "display_name": "Globex", "users": None})
    return folder
