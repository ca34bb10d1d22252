"""OpenTelemetry exporters."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from loraswarm.shared.settings.paths import default_home


class TracingSettings(BaseModel):
    exporter: Literal["none", "console", "otlp", "file"] = Field(
        default="none",
        description="Where spans go: `otlp` (a collector or Jaeger), `console`, or `file` (JSON lines).",
    )
    otlp_endpoint: str = Field(
        default="http://127.0.0.1:4318", description="OTLP/HTTP endpoint (`/v1/traces` is appended)."
    )
    file: Path = Field(
        default_factory=lambda: default_home() / "traces.jsonl",
        description="JSON-lines file of spans when the exporter is `file`.",
    )
