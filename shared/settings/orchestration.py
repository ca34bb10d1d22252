"""The planner and the specialists: primary LLM, TGI endpoint, tenant configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

from loraswarm.shared.settings.paths import default_home


class OrchestrationSettings(BaseModel):
    """Read from `LORASWARM_ORCHESTRATION__<FIELD>`."""

    tenants_dir: Path = Field(
        default_factory=lambda: default_home() / "tenants",
        description="Folder of tenant configurations, one `<tenant_id>.yaml` each (hot-reloaded).",
    )
    primary_llm_base_url: str = Field(
        default="http://127.0.0.1:3000/v1",
        description="OpenAI-compatible base URL of the planner's primary LLM (default: the model server).",
    )
    primary_llm_model: str = Field(
        default="tgi",
        description="Model name sent to the primary LLM (`tgi`: the model server's base model).",
    )
    primary_llm_api_key: SecretStr = Field(
        default=SecretStr("not-needed"), description="API key of the primary LLM endpoint."
    )
    tgi_url: str = Field(
        default="http://127.0.0.1:3000",
        description="Base URL of TGI (or the model server) that the specialists call with their adapter.",
    )
    specialist_engine: Literal["loraswarm", "tgi", "vllm"] = Field(
        default="loraswarm",
        description="What the specialists answer with: `loraswarm` (the project's model server at "
        "`tgi_url`), `tgi` (Hugging Face TGI at `tgi_url`) or `vllm` (vLLM's OpenAI API at `vllm_url`).",
    )
    vllm_url: str = Field(
        default="http://127.0.0.1:8000/v1",
        description="OpenAI base URL of vLLM, for `specialist_engine: vllm`.",
    )
    vllm_base_model: str = Field(
        default="",
        description="vLLM's served name of the base model (for specialists without an adapter); empty: "
        "the model its `/v1/models` lists without a parent.",
    )
    vllm_api_key: SecretStr | None = Field(
        default=None,
        description="vLLM's `--api-key`, sent by the specialists and the vLLM loader (`Authorization: Bearer`).",
    )
    vllm_reconcile_s: float = Field(
        default=30.0,
        gt=0,
        description="How often the vLLM loader compares what vLLM has loaded with the adapter store "
        "(besides each `adapter.published`): rollbacks, deletions and adapters trained from the CLI.",
    )
    vllm_loader_group: str = Field(
        default="vllm-loader",
        description="Kafka consumer group of the vLLM loader. Run-time adapters are per vLLM process, "
        "so a loader beside each vLLM replica needs a group of its own (deploy/k8s: the pod's name).",
    )
    vllm_max_lora_rank: int = Field(
        default=32,
        ge=1,
        description="vLLM's `--max-lora-rank`: the loader leaves out adapters above it (a served "
        "stack's rank is the sum of its parts').",
    )
    tgi_api_key: SecretStr | None = Field(
        default=None,
        description="Service key the specialists send to the model server (`Authorization: Bearer`); it "
        "must be one of the server's `service_keys` for the tenants they serve. The planner sends "
        "`primary_llm_api_key`.",
    )
    llm_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Timeout of one LLM call (a specialist's or the planner's), within the request's "
        "deadline. 60 s: on 2 CPU cores a model server's first calls (grammar compilation, two "
        "specialists at once) took over 30 s.",
    )
    planner_concurrency: int = Field(
        default=64,
        ge=1,
        description="Events one planner handles at once: requests side by side, each request's events "
        "in order. 1: one at a time per partition (a tenant's requests queue behind each other's LLM calls).",
    )
    specialist_concurrency: int = Field(
        default=16,
        ge=1,
        description="Specialist tasks one specialist instance runs at once; TGI and the model server "
        "batch concurrent calls, so this is what fills their batches. 1: one at a time per partition.",
    )
    plan_max_tokens: int = Field(
        default=48,
        ge=16,
        description="Token limit of the planner's plan (a list of specialist names: about 6 tokens each).",
    )
    compose_max_tokens: int = Field(
        default=160,
        ge=16,
        description="Token limit of the composer's LLM call (the phrasing of the extracted sentences; "
        "the legacy composer writes the whole recommendation in it and needs about 320).",
    )
    composer: Literal["extractive", "legacy"] = Field(
        default="extractive",
        description="`extractive`: the sentences that answer each part of the question, taken from the "
        "specialists' answers and the passages, then phrased by the primary LLM under the answer checks. "
        "`legacy`: one LLM call writes the whole recommendation (the composer before issue 14, kept as "
        "the eval's baseline).",
    )
    compose_phrase: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Let the primary LLM phrase the extracted sentences (kept only when it passes the "
        "checks: no echo, no repetition, every extracted fact kept). `off`: the extracted sentences as "
        "they are. `auto`: on when a primary LLM other than the embedded model server's base model "
        "(`tgi`) is configured: on the demo the 135M model changed 2 of 9 answers, one into a false "
        "statement, for a p50 of 19.6 s against 14.8 s without.",
    )

    @field_validator("compose_phrase", mode="before")
    @classmethod
    def _on_off(cls, value: object) -> object:
        # It was a bool: `true`/`false` (and the YAML/env spellings of them) still mean on/off.
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return "on" if value.lower() in {"true", "1", "yes"} else "off"
        return value

    @property
    def embedded_primary(self) -> bool:
        """Whether the primary LLM is the project's model server's base model (`tgi`), the 135M
        default, rather than a configured endpoint: what every `auto` that depends on it reads."""
        return self.primary_llm_model == "tgi"

    @property
    def phrases(self) -> bool:
        """Whether the composer asks the primary LLM to phrase (see `compose_phrase`)."""
        if self.compose_phrase == "auto":
            return not self.embedded_primary
        return self.compose_phrase == "on"

    retrieval_k: int = Field(
        default=5, ge=1, le=50, description="Passages the planner retrieves per request."
    )
    deadline_check_s: float = Field(
        default=0.2, gt=0, description="How often the planner looks for requests past their deadline."
    )
