"""Prometheus metrics for one app instance (its own registry: no globals)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
INFERENCE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "http_request_duration_seconds",
            "Time from request to response, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_latency = Histogram(
            "model_inference_duration_seconds",
            "Time spent in onnxruntime per inference call",
            buckets=INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "model_batch_size",
            "Rows per model call (dynamic batching merges requests)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.inferred_examples = Counter(
            "model_inferred_examples",
            "Examples (batch rows) run through the model",
            registry=self.registry,
        )
        self.model_info = Gauge(
            "model_info",
            "The served model (value 1)",
            ["name", "version", "sha256"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "model_ready", "1 when the model is loaded and warmed up", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every request by its route template and times it."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # Label lookups cost more than the increments: keep each child once.
        self._counters: dict[tuple[str, str, int], object] = {}
        self._latencies: dict[str, object] = {}

    async def process_request(self, req, resp) -> None:
        req.context.started = time.perf_counter()

    async def process_response(self, req, resp, resource, req_succeeded) -> None:
        route = req.uri_template or "unmatched"
        key = (route, req.method, resp.status_code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self._metrics.requests.labels(
                route, req.method, str(resp.status_code)
            )
        counter.inc()
        started = getattr(req.context, "started", None)
        if started is not None:
            latency = self._latencies.get(route)
            if latency is None:
                latency = self._latencies[route] = self._metrics.request_latency.labels(route)
            latency.observe(time.perf_counter() - started)
