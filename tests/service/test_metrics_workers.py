"""Several workers' metrics, combined in this process: each worker's metric files are written
under its own pid (prometheus-client's MultiProcessValue with a chosen process identifier,
https://prometheus.github.io/client_python/multiprocess/), and one scrape reads them all.

What the README's *Metrics with several workers* promises, rule by rule: counters and
histograms add up and keep the values of workers that stopped; `model_ready` is the lowest
live worker's, `model_info` the highest, the capture queue the sum, the spool the highest,
`prediction_capture_sink_up` the lowest; a worker that stops or died leaves the live gauges.
(tests/service/test_workers.py runs two real uvicorn workers.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, values
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from service.capture.metrics import CaptureMetrics
from service.metrics import Metrics, reset_multiprocess_directory
from service.model import ModelInfo

# No process has a pid this large (Linux's pid_max is at most 2**22): a worker that died.
DEAD_PID = 99_999_999
# A worker that starts forgets the live gauges of pids that are not running: the two
# workers of a test are two processes that run (this one and its parent).
RUNNING_PID = os.getpid()
OTHER_RUNNING_PID = os.getppid()


def parse(text: bytes) -> dict:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """`worker(pid)`: the service's and the capture's metrics as the worker `pid` makes them."""
    directory = tmp_path / "metrics"
    reset_multiprocess_directory(directory)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))

    def make(pid: int) -> tuple[Metrics, CaptureMetrics]:
        # Every value made from now on (a labelled child too) is written under `pid`:
        # a test finishes one worker's writes before it makes the next worker.
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid))
        registry = CollectorRegistry()
        return Metrics(registry, multiprocess_dir=directory), CaptureMetrics(registry)

    make.directory = directory
    return make


def test_a_scrape_combines_every_workers_metrics_by_the_documented_rule(worker):
    info = ModelInfo("mnist-8", "1", "ab" * 32)
    workers = []
    for pid, answered, ready, queued, spooled, sink_up in (
        (RUNNING_PID, 3, 1, 5, 2, 1),
        (OTHER_RUNNING_PID, 4, 0, 7, 6, 0),
    ):
        metrics, capture = worker(pid)
        metrics.requests.labels("/predict", "POST", "200").inc(answered)
        metrics.inferred_examples.inc(answered)
        metrics.model_info.labels(info.name, info.version, info.sha256).set(1)
        metrics.ready.set(ready)
        capture.queued.set(queued)
        capture.spool_parts.set(spooled)
        capture.sink_up.set(sink_up)
        workers.append(metrics)
    first, second = workers

    # Either worker's scrape gives the same totals.
    for scraper in (first, second):
        found = parse(scraper.render())
        predict = (("method", "POST"), ("route", "/predict"), ("status", "200"))
        assert found[("http_requests_total", predict)] == 7
        assert found[("model_inferred_examples_total", ())] == 7
        labels = (("name", info.name), ("sha256", info.sha256), ("version", info.version))
        assert found[("model_info", labels)] == 1
        assert found[("model_ready", ())] == 0  # one worker is not ready yet
        assert found[("prediction_capture_queue_records", ())] == 12
        assert found[("prediction_capture_spool_parts", ())] == 6
        assert found[("prediction_capture_sink_up", ())] == 0
        assert not [name for name, _ in found if name.endswith("_created")]

    # The second worker stops: its gauges leave, its counts stay. (Metrics.close marks
    # os.getpid() dead: the last test of this file runs it.)
    mark_process_dead(OTHER_RUNNING_PID, str(worker.directory))
    found = parse(first.render())
    assert found[("http_requests_total", predict)] == 7
    assert found[("model_ready", ())] == 1
    assert found[("prediction_capture_queue_records", ())] == 5
    assert found[("prediction_capture_spool_parts", ())] == 2
    assert found[("prediction_capture_sink_up", ())] == 1


def test_a_worker_that_starts_forgets_the_live_gauges_of_workers_that_died(worker):
    dead, dead_capture = worker(DEAD_PID)
    dead.ready.set(0)
    dead.requests.labels("/predict", "POST", "200").inc(2)
    dead_capture.sink_up.set(0)
    dead_capture.queued.set(9)
    assert list(worker.directory.glob(f"gauge_live*_{DEAD_PID}.db"))
    # A worker that starts now removes the dead one's live gauges; its counts stay.
    live, live_capture = worker(RUNNING_PID)
    live.ready.set(1)
    live_capture.sink_up.set(1)
    live_capture.queued.set(1)
    assert not list(worker.directory.glob(f"gauge_live*_{DEAD_PID}.db"))
    found = parse(live.render())
    assert found[("model_ready", ())] == 1
    assert found[("prediction_capture_sink_up", ())] == 1
    assert found[("prediction_capture_queue_records", ())] == 1
    predict = (("method", "POST"), ("route", "/predict"), ("status", "200"))
    assert found[("http_requests_total", predict)] == 2


def test_a_worker_that_stops_removes_its_own_live_gauges(worker):
    metrics, capture = worker(os.getpid())
    metrics.ready.set(1)
    capture.queued.set(3)
    assert list(worker.directory.glob(f"gauge_live*_{os.getpid()}.db"))
    metrics.close()
    assert not list(worker.directory.glob(f"gauge_live*_{os.getpid()}.db"))


def test_the_capture_metrics_are_named_typed_and_explained_as_documented():
    """Every capture series as a scrape shows it: name, type and help text (README, GET
    /metrics and *Prediction capture*), nothing else."""
    from prometheus_client import generate_latest

    registry = CollectorRegistry()
    CaptureMetrics(registry)
    heads = [
        line for line in generate_latest(registry).decode().splitlines() if line.startswith("# ")
    ]
    expected = {
        "prediction_capture_records_captured_total": (
            "counter",
            "Records taken into the capture queue (one per batch row)",
        ),
        "prediction_capture_records_sampled_out_total": (
            "counter",
            "Records left out by PREDICTION_LOG_SAMPLE",
        ),
        "prediction_capture_records_written_total": (
            "counter",
            "Records in parts the sink has stored",
        ),
        "prediction_capture_parts_uploaded_total": (
            "counter",
            "Parts the sink has stored (from memory or from the spool)",
        ),
        "prediction_capture_retries_total": (
            "counter",
            "Failed sink writes that were tried again or spooled",
        ),
        "prediction_capture_parts_spooled_total": (
            "counter",
            "Parts written to the local spool because the sink was down or memory was full",
        ),
        "prediction_capture_records_dropped_total": (
            "counter",
            "Records lost because neither the sink nor the local spool could take them",
        ),
        "prediction_capture_encode_seconds": (
            "histogram",
            "Time one slice of records held the event loop being encoded and compressed",
        ),
        "prediction_capture_queue_records": (
            "gauge",
            "Records waiting in memory (queue and parts not yet stored)",
        ),
        "prediction_capture_spool_parts": ("gauge", "Parts waiting in the local spool"),
        "prediction_capture_sink_up": ("gauge", "1 while the last write to the sink succeeded"),
    }
    want = []
    for name, (kind, text) in expected.items():
        want += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
    assert sorted(heads) == sorted(want)
