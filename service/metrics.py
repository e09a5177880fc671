"""Prometheus metrics for one app instance (its own registry: no globals).

With several uvicorn workers (WEB_CONCURRENCY > 1) each worker is a process with its
own counters, and a scrape reaches one of them at random: consecutive scrapes would
read different totals, which Prometheus takes for counter resets. So with several
workers the service runs prometheus-client's multiprocess mode (prometheus-client,
"Multiprocess Mode"): every worker writes its values to files in one directory
(PROMETHEUS_MULTIPROC_DIR), and every scrape sums all of them. The parent process
empties the directory before the workers start, as that guide requires; a worker
that stops marks itself dead (`mark_process_dead`), and a worker that starts does the
same for workers that died without stopping.

What multiprocess mode changes, as that guide lists: gauges need a rule for
combining the workers' values (each gauge below names its `multiprocess_mode`, and
`live*` modes forget a worker once it is dead), and custom collectors, Info and Enum
metrics are not available (none is used here). Counters and histograms of workers
that have exited stay in the sums, so totals never go back. `*_created` series are
not exported in either mode: they double the series count for nothing a dashboard
or alert here reads.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
INFERENCE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25)
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Files of gauges whose multiprocess mode forgets dead workers: gauge_live<mode>_<pid>.db
_LIVE_GAUGE_FILES = "gauge_live*_*.db"


def multiprocess_directory(settings) -> Path | None:
    """Where the workers' metric files go: PROMETHEUS_MULTIPROC_DIR when it is set,
    else, with more than one worker, `onnx-ship-metrics-<PORT>` in the temporary
    directory (TMPDIR: the image's writable volume), so two services on one host
    never share one; None for a single worker without the variable."""
    if settings.metrics_dir is not None:
        return settings.metrics_dir
    if settings.workers > 1:
        return Path(tempfile.gettempdir()) / f"onnx-ship-metrics-{settings.port}"
    return None


def reset_multiprocess_directory(directory: Path) -> None:
    """Create `directory` and delete the metric files an earlier run left there.

    Only the parent process calls this, before any worker starts: the guide requires
    the directory be wiped between runs, and a worker's files must never be deleted
    while it runs. Only prometheus-client's own `*.db` files are deleted.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob("*.db"):
        leftover.unlink(missing_ok=True)
    with tempfile.TemporaryFile(dir=directory, prefix=".write-test-"):
        pass  # the workers write here: fail now, with its name, rather than in a worker


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self, registry: CollectorRegistry | None = None, multiprocess_dir: Path | None = None
    ) -> None:
        prometheus_client.disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        self._multiprocess_dir = multiprocess_dir
        self._exposed = self.registry
        if multiprocess_dir is not None:
            # The guide: a fresh registry holding only the collector that reads the files,
            # never one the metrics themselves are registered in (that would count twice).
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed, path=str(multiprocess_dir))
            _forget_dead_workers(multiprocess_dir)
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
        # Every live worker serves the same model: 1 while any of them does.
        self.model_info = Gauge(
            "model_info",
            "The served model (value 1)",
            ["name", "version", "sha256"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        # Ready only when every live worker has its model: the lowest of them.
        self.ready = Gauge(
            "model_ready",
            "1 when the model is loaded and warmed up",
            registry=self.registry,
            multiprocess_mode="livemin",
        )

    @property
    def multiprocess(self) -> bool:
        return self._multiprocess_dir is not None

    def render(self) -> bytes:
        return generate_latest(self._exposed)

    def close(self) -> None:
        """This worker stops: its live gauges leave the sums (`mark_process_dead`)."""
        if self._multiprocess_dir is not None:
            mark_process_dead(os.getpid(), str(self._multiprocess_dir))


def _forget_dead_workers(directory: Path) -> None:
    """Live gauges of workers that died without stopping (killed, crashed) leave the sums."""
    for path in directory.glob(_LIVE_GAUGE_FILES):
        pid_text = path.stem.rsplit("_", 1)[-1]
        if pid_text.isdigit() and not _running(int(pid_text)):
            mark_process_dead(int(pid_text), str(directory))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
