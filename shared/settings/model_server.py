"""The model server (TGI-compatible multi-LoRA serving; DESIGN.md §2, §5)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class ModelServerSettings(BaseModel):
    """Read from `LORASWARM_MODEL_SERVER__<FIELD>`."""

    port: int = Field(
        default=3000, ge=0, le=65535, description="Port of `loraswarm serve model-server` when --port is 0."
    )
    # TGI's own limits, under TGI's names (`/info` reports them).
    max_concurrent_requests: int = Field(
        default=128,
        ge=1,
        description="Requests running or queued at once; one more is answered 429 `overloaded` (TGI's default).",
    )
    max_input_tokens: int = Field(
        default=1024, ge=1, description="Longest prompt in tokens (after `truncate`); longer is a 422."
    )
    max_total_tokens: int = Field(
        default=2048, ge=2, description="Prompt plus `max_new_tokens` of one request, in tokens."
    )
    default_max_new_tokens: int = Field(
        default=100,
        ge=1,
        description="`max_new_tokens` of a request that gives none (capped by `max_total_tokens`).",
    )
    max_stop_sequences: int = Field(
        default=4, ge=0, description="Most `stop` sequences one request may give."
    )
    max_best_of: int = Field(default=2, ge=1, description="Largest `best_of`.")
    max_top_n_tokens: int = Field(default=5, ge=0, description="Largest `top_n_tokens`.")
    compat_return_full_text: bool = Field(
        default=True,
        description="`return_full_text` of `POST /` when the request does not say: TGI prepends the prompt "
        "for text-generation models; pass `return_full_text: false` to get only the new text.",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Number format of the served weights and activations (`/info` says `model_dtype`). "
        "`auto`: bf16 on CUDA, and on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX; there, "
        "`loraswarm bench dtype` measured 2.4x fp32's prefill throughput and 2.2x faster decode steps); "
        "fp32 on any other CPU. Training has its own setting (`trainer.defaults.precision`).",
    )
    # The batching engine.
    max_batch_size: int = Field(
        default=32, ge=1, description="Sequences decoded together in one forward pass; the rest wait."
    )
    max_batch_total_tokens: int = Field(
        default=32_768,
        ge=16,
        description="Sum over the running batch of prompt + max_new_tokens: bounds the KV cache's memory.",
    )
    waiting_served_ratio: float = Field(
        default=1.2,
        ge=0,
        description="TGI's rule: pause the running batch to prefill waiting requests once they are this "
        "many times the running ones...",
    )
    max_waiting_steps: int = Field(
        default=0,
        ge=0,
        description="...or once the oldest has waited this many decode steps (TGI's max_waiting_tokens, 20 "
        "there). 0, the default, prefills arrivals at once: on a CPU a prefill costs its tokens' compute, "
        "so waiting to prefill several together gains little throughput and costs TTFT.",
    )
    threads: int = Field(
        default=0,
        ge=0,
        description="CPU threads of the forward passes; 0 keeps torch's default (one per core). On a "
        "machine shared with other busy processes, 1 avoids threads waiting on each other.",
    )
    max_prefill_tokens: int = Field(
        default=512,
        ge=16,
        description="Prompt tokens prefilled in one forward pass between decode steps (TGI's "
        "max_batch_prefill_tokens; small on a CPU, so a burst of prompts does not stall running streams).",
    )
    # Adapters.
    max_resident_adapters: int = Field(
        default=128,
        ge=1,
        description="Adapters kept in memory (LRU); the rest stay on disk and load on first use.",
    )
    max_resident_adapter_mb: float = Field(
        default=1024.0, gt=0, description="Memory the resident adapters may take, in MiB (LRU)."
    )
    max_adapters_per_request: int = Field(
        default=4, ge=1, description="Most adapters one request may stack (`acme/company+acme/user-7`)."
    )
    max_lora_rank: int = Field(default=256, ge=1, description="Largest LoRA rank the server loads.")
    # Tenancy.
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="API key -> tenant id. When set, every request needs `Authorization: Bearer <key>` and "
        "its tenant is the key's; when empty, the tenant is the `X-Tenant-Id` header (trusted network).",
    )
    service_keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Service key -> the tenants it may serve (`["*"]`: any), for the swarm\'s specialists '
        "and planner: they send `Authorization: Bearer <key>` and pick the tenant with `X-Tenant-Id`.",
    )
    admin_api_key: SecretStr | None = Field(
        default=None,
        description="Bearer token of the `/admin/*` routes; unset, they answer only connections that arrive "
        "on a loopback address (the server bound to 127.0.0.1, or a caller on the same host).",
    )
    event_group: str = Field(
        default="model-server",
        description="Consumer group for `adapter.published`; give every replica its own so each hears every "
        "publication.",
    )
