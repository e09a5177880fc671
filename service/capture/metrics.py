"""The capture's Prometheus metrics, on the app's own registry.

Each gauge names how several workers' values combine in multiprocess mode (see
service.metrics); counters simply add up.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# How long one slice of records held the event loop (seconds): from a few dozen microseconds
# (a slice of single-image records) to the milliseconds a batch of hundreds of rows takes.
ENCODE_BUCKETS = (0.000025, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05)


class CaptureMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.captured = Counter(
            "prediction_capture_records_captured",
            "Records taken into the capture queue (one per batch row)",
            registry=registry,
        )
        self.sampled_out = Counter(
            "prediction_capture_records_sampled_out",
            "Records left out by PREDICTION_LOG_SAMPLE",
            registry=registry,
        )
        self.written = Counter(
            "prediction_capture_records_written",
            "Records in parts the sink has stored",
            registry=registry,
        )
        self.parts_uploaded = Counter(
            "prediction_capture_parts_uploaded",
            "Parts the sink has stored (from memory or from the spool)",
            registry=registry,
        )
        self.retries = Counter(
            "prediction_capture_retries",
            "Failed sink writes that were tried again or spooled",
            registry=registry,
        )
        self.spooled = Counter(
            "prediction_capture_parts_spooled",
            "Parts written to the local spool because the sink was down or memory was full",
            registry=registry,
        )
        self.dropped = Counter(
            "prediction_capture_records_dropped",
            "Records lost because neither the sink nor the local spool could take them",
            registry=registry,
        )
        self.encode_seconds = Histogram(
            "prediction_capture_encode_seconds",
            "Time one slice of records held the event loop being encoded and compressed",
            buckets=ENCODE_BUCKETS,
            registry=registry,
        )
        self.queued = Gauge(
            "prediction_capture_queue_records",
            "Records waiting in memory (queue and parts not yet stored)",
            registry=registry,
            multiprocess_mode="livesum",  # each worker's own memory: they add up
        )
        self.spool_parts = Gauge(
            "prediction_capture_spool_parts",
            "Parts waiting in the local spool",
            registry=registry,
            # The workers share one spool directory and each counts the parts it found
            # there at start: a sum would count those parts once per worker.
            multiprocess_mode="livemax",
        )
        self.sink_up = Gauge(
            "prediction_capture_sink_up",
            "1 while the last write to the sink succeeded",
            registry=registry,
            multiprocess_mode="livemin",  # 0 as soon as any worker's last write failed
        )
