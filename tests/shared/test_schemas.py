"""The committed schemas/ must be what the event models generate."""

from __future__ import annotations

import json
from pathlib import Path

from loraswarm.shared import schemas
from loraswarm.shared.events import EVENT_MODELS

SCHEMAS = Path(__file__).parents[2] / "schemas"


def test_committed_schemas_match_the_models() -> None:
    stale = schemas.drift(SCHEMAS)
    assert not stale, f"schemas/ is out of date ({', '.join(stale)}): run `loraswarm schemas export`"


def test_drift_is_detected(tmp_path: Path) -> None:
    schemas.export(tmp_path)
    assert schemas.drift(tmp_path) == []
    path = tmp_path / "retrieval.requested.json"
    doc = json.loads(path.read_text())
    doc["properties"]["k"]["maximum"] = 1000
    path.write_text(json.dumps(doc))
    assert schemas.drift(tmp_path) == ["retrieval.requested.json"]


def test_asyncapi_names_every_topic_with_its_payload() -> None:
    doc = json.loads((SCHEMAS / "asyncapi.json").read_text())
    assert doc["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in doc["channels"].values()}
    assert addresses >= {m.event_type for m in EVENT_MODELS} | {"dlq"}
    assert "RecommendationRequested" in doc["components"]["schemas"]
