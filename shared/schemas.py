"""JSON Schema of every event and the AsyncAPI document, as committed under schemas/.

`loraswarm schemas export` writes them; `tests/shared/test_schemas.py` fails when the committed
files differ from what the models generate, so the contract cannot drift silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from loraswarm.shared.events import EVENT_MODELS, DeadLetter


def event_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for every event type and the dead letter."""
    out: dict[str, dict[str, Any]] = {}
    models: list[type[BaseModel]] = [*EVENT_MODELS, DeadLetter]
    for model in models:
        name = model.model_fields["type"].default
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://loraswarm.dev/schemas/{name}.json"
        out[f"{name}.json"] = schema
    return out


def asyncapi_document() -> dict[str, Any]:
    """FastStream's AsyncAPI 3.0 document of every service's subscribers and publishers."""
    from faststream.specification import AsyncAPI

    from loraswarm.shared.catalog import catalog_broker

    spec = AsyncAPI(catalog_broker(), title="loraswarm events", version="1.0.0", schema_version="3.0.0")
    return json.loads(spec.to_specification().to_json())  # type: ignore[no-any-return]


def rendered() -> dict[str, str]:
    files = {name: _dump(schema) for name, schema in event_schemas().items()}
    files["asyncapi.json"] = _dump(asyncapi_document())
    return files


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """Names of files under `directory` that are missing or differ from the models."""
    return [
        name
        for name, text in rendered().items()
        if not (directory / name).is_file() or (directory / name).read_text() != text
    ]
