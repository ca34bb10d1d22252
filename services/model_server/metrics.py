"""Prometheus metrics under TGI's names, plus per-tenant token usage and the adapter LRU.

TGI's counters are exported as TGI exports them: `tgi_request_count 12`, no `_total` suffix.
prometheus-client always appends `_total` to a counter, so those few are exported untyped by a
small collector; histograms and gauges are plain prometheus-client objects. Each server has its
own registry (tests run several servers in one process).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class _TgiCounters(Collector):
    """`tgi_request_count`, `tgi_request_success`, `tgi_request_failure{err}` with TGI's exact names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.success = 0
        self.failure: dict[str, int] = defaultdict(int)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            count, success, failure = self.count, self.success, dict(self.failure)
        for name, doc, value in (
            ("tgi_request_count", "Requests received.", count),
            ("tgi_request_success", "Requests answered in full.", success),
        ):
            metric = Metric(name, doc, "unknown")
            metric.add_sample(name, {}, value)
            yield metric
        metric = Metric("tgi_request_failure", "Requests that failed, by error type.", "unknown")
        for err, value in sorted(failure.items()):
            metric.add_sample("tgi_request_failure", {"err": err}, value)
        yield metric

    def inc(self, what: str, err: str | None = None) -> None:
        with self._lock:
            if what == "count":
                self.count += 1
            elif what == "success":
                self.success += 1
            else:
                self.failure[err or "unknown"] += 1


class ServerMetrics:
    def __init__(self, live: Callable[[], dict[str, float]]) -> None:
        self.registry = CollectorRegistry()
        self.counters = _TgiCounters()
        self.registry.register(self.counters)
        r = self.registry

        def seconds(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, registry=r, buckets=_DURATION_BUCKETS)

        self.duration = seconds("tgi_request_duration", "Whole request time.")
        self.validation_duration = seconds("tgi_request_validation_duration", "Validation time.")
        self.queue_duration = seconds("tgi_request_queue_duration", "Time waiting for a batch slot.")
        self.inference_duration = seconds("tgi_request_inference_duration", "Time in the batch.")
        self.time_per_token = seconds("tgi_request_mean_time_per_token_duration", "Inference time per token.")
        self.generated_tokens = Histogram(
            "tgi_request_generated_tokens",
            "Generated tokens per request.",
            registry=r,
            buckets=_TOKEN_BUCKETS,
        )
        self.input_length = Histogram(
            "tgi_request_input_length", "Prompt tokens per request.", registry=r, buckets=_TOKEN_BUCKETS
        )
        self.max_new_tokens = Histogram(
            "tgi_request_max_new_tokens", "Requested max_new_tokens.", registry=r, buckets=_TOKEN_BUCKETS
        )
        self.tenant_tokens = Counter(
            "loraswarm_model_server_tokens",
            "Tokens processed per tenant: `input` (prompt) or `output` (generated).",
            ["tenant", "kind"],
            registry=r,
        )
        self.adapter_load_duration = seconds(
            "loraswarm_model_server_adapter_load_duration", "Loading one adapter from the store."
        )
        self._live = live
        self._gauges = {
            "tgi_queue_size": Gauge("tgi_queue_size", "Requests waiting for a batch slot.", registry=r),
            "tgi_batch_current_size": Gauge(
                "tgi_batch_current_size", "Sequences in the running batch.", registry=r
            ),
            "adapters_resident": Gauge(
                "loraswarm_model_server_adapters_resident", "Adapters in memory (the LRU).", registry=r
            ),
            "adapters_resident_bytes": Gauge(
                "loraswarm_model_server_adapters_resident_bytes",
                "Memory of the resident adapters.",
                registry=r,
            ),
            "adapter_loads": Gauge(
                "loraswarm_model_server_adapter_loads", "Adapters loaded from disk since start.", registry=r
            ),
            "adapter_evictions": Gauge(
                "loraswarm_model_server_adapter_evictions",
                "Adapters evicted from the LRU since start.",
                registry=r,
            ),
        }

    def render(self) -> bytes:
        for name, value in self._live().items():
            self._gauges[name].set(value)
        return generate_latest(self.registry)

    def count_tokens(self, tenant: str | None, input_tokens: int, output_tokens: int) -> None:
        label = tenant or "_base"
        self.tenant_tokens.labels(label, "input").inc(input_tokens)
        self.tenant_tokens.labels(label, "output").inc(output_tokens)
