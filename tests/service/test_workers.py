"""Several uvicorn workers: every scrape of /metrics reports the totals of all of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, free_port
from tests.service.conftest import MNIST8_SHA256

pytestmark = pytest.mark.integration

WORKERS = 2
PREDICT_200 = (
    "http_requests_total",
    (("method", "POST"), ("route", "/predict"), ("status", "200")),
)


class Workers:
    def __init__(self, env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO,
            env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(self.port)},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def wait_until_every_worker_serves(self, timeout: float = 60) -> None:
        """Each worker logs "Application startup complete." once it serves."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = self.log.read_text().count("Application startup complete.")
            if started >= WORKERS:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{WORKERS} workers did not start within {timeout}s")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def fetch(url: str, body: bytes | None = None) -> bytes:
    """One request on its own connection, so the kernel may hand it to either worker."""
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", "Connection": "close"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def scrape(url: str) -> tuple[dict, str]:
    text = fetch(url + "/metrics").decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values, text


def predict_concurrently(url: str, count: int) -> None:
    body = json.dumps({"data": [0] * 784}).encode()
    failures: list[BaseException] = []

    def call() -> None:
        try:
            json.loads(fetch(url + "/predict", body))["prediction"]
        except BaseException as exc:  # collected and re-raised in the test thread
            failures.append(exc)

    for start in range(0, count, 8):
        threads = [threading.Thread(target=call) for _ in range(min(8, count - start))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not failures, failures


def predictions_by_worker(directory: Path) -> dict[str, float]:
    """Each worker's own count of answered /predict calls, read from its metric file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if (sample.name, tuple(sorted(sample.labels.items()))) == PREDICT_200:
                    counts[path.stem.rsplit("_", 1)[-1]] = sample.value
    return counts


def test_every_scrape_reports_the_totals_of_all_workers(mnist8_path, tmp_path):
    env = {
        "MODEL_URL": str(mnist8_path),
        "MODEL_SHA256": MNIST8_SHA256,
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "PREDICTION_LOG_URL": "off",
        "WEB_CONCURRENCY": str(WORKERS),
        "TMPDIR": str(tmp_path),  # the metrics directory defaults to a place in it
    }
    server = Workers(env, tmp_path / "first.log")
    try:
        server.wait_until_every_worker_serves()
        metrics_dir = tmp_path / f"onnx-ship-metrics-{server.port}"
        sent = 0
        # Connections go to whichever worker accepts first: send until both have answered.
        for _ in range(10):
            predict_concurrently(server.url, 40)
            sent += 40
            if len([n for n in predictions_by_worker(metrics_dir).values() if n > 0]) == WORKERS:
                break
        totals = [scrape(server.url) for _ in range(20)]
        assert [values[PREDICT_200] for values, _ in totals] == [sent] * 20
        for values, text in totals:
            assert values[("model_inferred_examples_total", ())] == sent
            assert values[("model_ready", ())] == 1
            assert "_created" not in text
            assert "# HELP http_requests_total HTTP requests by route, method and status" in text
        # Both workers answered, so those totals are sums over two processes.
        by_worker = predictions_by_worker(metrics_dir)
        assert len(by_worker) == WORKERS and all(by_worker.values()), by_worker
        assert sum(by_worker.values()) == sent
    finally:
        server.stop()
    # Stopped workers marked themselves dead: no live gauge of theirs is left.
    assert list(metrics_dir.glob("gauge_live*")) == []

    # A new run on the same port starts from nothing: the parent empties the directory
    # before any worker starts.
    again = Workers(env, tmp_path / "second.log", port=server.port)
    try:
        again.wait_until_every_worker_serves()
        values, _ = scrape(again.url)
        assert values.get(PREDICT_200, 0) == 0
    finally:
        again.stop()
