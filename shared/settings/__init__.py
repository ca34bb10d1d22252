"""Settings for every part of loraswarm, read from the environment (prefix `LORASWARM_`).

Nested groups use `__`: `LORASWARM_KAFKA__BOOTSTRAP_SERVERS=host:9092`. Each field's description
is the text `--help` and the README's configuration reference show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from loraswarm.shared.settings.gateway import GatewaySettings
from loraswarm.shared.settings.infra import InfraSettings
from loraswarm.shared.settings.kafka import KafkaSettings
from loraswarm.shared.settings.model_server import ModelServerSettings
from loraswarm.shared.settings.orchestration import OrchestrationSettings
from loraswarm.shared.settings.paths import default_home
from loraswarm.shared.settings.retrieval import RetrievalSettings
from loraswarm.shared.settings.tracing import TracingSettings
from loraswarm.shared.settings.trainer import TrainerSettings

__all__ = [
    "GatewaySettings",
    "InfraSettings",
    "KafkaSettings",
    "ModelServerSettings",
    "OrchestrationSettings",
    "RetrievalSettings",
    "Settings",
    "TracingSettings",
    "TrainerSettings",
    "load_settings",
]


class Settings(BaseSettings):
    """Everything loraswarm reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="LORASWARM_", env_nested_delimiter="__", extra="ignore")

    broker: Literal["memory", "kafka"] = Field(
        default="kafka",
        description="`kafka` for a real cluster; `memory` for the in-process broker of the embedded default.",
    )
    data_dir: Path = Field(
        default_factory=lambda: default_home() / "data",
        description="Where services keep local state (processed-event ids, adapter store).",
    )
    model_cache: Path = Field(
        default_factory=lambda: default_home() / "models",
        description="Folder of pulled base models (`loraswarm models pull`).",
    )
    base_model: str = Field(
        default="SmolLM2-135M-Instruct",
        description="The shared base model: the default, a Hugging Face model id, or a local folder.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where models run: CUDA (bf16) when present with `auto`, else the CPU."
    )
    shutdown_grace_s: float = Field(
        default=10.0,
        gt=0,
        description="On SIGTERM a service stops consuming, lets running handlers finish for up to "
        "this long (minus a moment to commit and close), hands back what has not finished "
        "uncommitted, and exits; past it the process exits anyway (Kubernetes allows 30 s).",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    infra: InfraSettings = Field(default_factory=InfraSettings)
    model_server: ModelServerSettings = Field(default_factory=ModelServerSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)


def load_settings() -> Settings:
    return Settings()
