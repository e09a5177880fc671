"""Prediction capture end to end: `python -m service` writing to a moto S3 server on loopback.

Every test counts records by id: each answered request must leave exactly its
records (one per batch row) in S3, whatever happens to S3 or to the service.
"""

from __future__ import annotations

import http.client
import itertools
import json
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest

from pipeline.predictions.store import open_store, part_keys, read_records
from tests.conftest import free_port, start_moto, wait_for_http
from tests.service.conftest import MNIST8_SHA256, start_server

pytestmark = pytest.mark.integration

BUCKET = "captures"
CAPTURE_URL = f"s3://{BUCKET}/predictions"


class Load:
    """Threads posting /predict (X-Request-Id) and V2 batches of two rows (V2 `id`)."""

    def __init__(
        self, url: str, images: np.ndarray, *, threads: int = 8, requests: int | None = None
    ) -> None:
        self._url = urllib.parse.urlparse(url)
        self._images = images.reshape(len(images), -1).astype(int).tolist()
        self._limit = requests
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        self.answered: list[str] = []  # the record ids each answered request must leave
        self.sent: list[str] = []
        self.errors: list[str] = []
        self.tag = f"{time.monotonic_ns():x}"

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def wait(self) -> None:
        for thread in self._threads:
            thread.join(timeout=60)

    def wait_for_answers(self, count: int, timeout: float = 30.0) -> bool:
        """Whether `count` record ids were answered within `timeout` seconds: a stall
        detector, not a speed demand."""
        deadline = time.monotonic() + timeout
        while len(self.answered) < count:
            if time.monotonic() > deadline or self.errors:
                return False
            time.sleep(0.02)
        return True

    def _next(self) -> int | None:
        with self._lock:
            n = next(self._counter)
        return None if self._limit is not None and n >= self._limit else n

    def _run(self, index: int) -> None:
        conn = http.client.HTTPConnection(self._url.hostname, self._url.port, timeout=30)
        while not self._stop.is_set() and (n := self._next()) is not None:
            request_id = f"{self.tag}-{index}-{n}"
            image = self._images[n % len(self._images)]
            if n % 4 == 3:
                path = "/v2/models/mnist-8/infer"
                body = {
                    "id": request_id,
                    "inputs": [
                        {
                            "name": "Input3",
                            "shape": [2, 1, 28, 28],
                            "datatype": "FP32",
                            "data": image + image[::-1],
                        }
                    ],
                }
                ids = [f"{request_id}-0", f"{request_id}-1"]
            else:
                path, body, ids = "/predict", {"data": image}, [request_id]
            headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
            with self._lock:
                self.sent.extend(ids)
            try:
                conn.request("POST", path, body=json.dumps(body), headers=headers)
                response = conn.getresponse()
                response.read()
            except OSError as exc:
                with self._lock:
                    self.errors.append(f"{request_id}: {exc!r}")
                return
            with self._lock:
                if response.status == 200:
                    self.answered.extend(ids)
                else:
                    self.errors.append(f"{request_id}: HTTP {response.status}")


def captured_ids(url: str = CAPTURE_URL) -> list[str]:
    return [record["id"] for record in read_records(open_store(url), "dev")]


def wait_for_records(expected: int, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        ids = captured_ids()
        if len(ids) >= expected or time.monotonic() > deadline:
            return ids
        time.sleep(0.25)


def service_env(mnist8_path: Path, tmp_path: Path, name: str = "a") -> dict[str, str]:
    return {
        "MODEL_URL": str(mnist8_path),
        "MODEL_SHA256": MNIST8_SHA256,
        "MODEL_CACHE_DIR": str(tmp_path / f"cache-{name}"),
        "PREDICTION_LOG_URL": CAPTURE_URL,
        "APP_ENV": "dev",
    }


@pytest.fixture
def bucket(aws) -> str:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture
def images(mnist_test_set) -> np.ndarray:
    return mnist_test_set[0][:50]


def test_concurrent_requests_leave_exactly_one_record_per_row(
    bucket, mnist8_path, tmp_path, images
):
    server = start_server(service_env(mnist8_path, tmp_path))
    try:
        with Load(server.url, images, threads=16, requests=400) as load:
            load.wait()
        assert load.errors == []
        ids = wait_for_records(len(load.answered))
        time.sleep(1.5)  # a late duplicate would land within a flush interval
        ids = captured_ids()
        metrics = urllib.request.urlopen(server.url + "/metrics", timeout=5).read().decode()
    finally:
        server.stop()
    assert len(load.answered) == 500  # 300 single images + 100 batches of two
    assert sorted(ids) == sorted(load.answered)
    assert f"prediction_capture_records_written_total {len(ids)}.0" in metrics
    assert "prediction_capture_records_dropped_total 0.0" in metrics


class DurableMoto:
    """A moto server that can be killed and restarted with its buckets and objects.

    moto keeps its state in memory: its own request recording, replayed into the
    restarted server, plays the part of S3's durable storage.
    """

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.recording = directory / "moto-recording.jsonl"
        self._env = {"MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(self.recording)}
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        process = start_moto(self.port, self._env)
        wait_for_http(f"{self.endpoint}/moto-api/", process=process)
        return process

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start again and replay the recording (a killed moto may leave half a line)."""
        data = self.recording.read_bytes()
        self.recording.write_bytes(data[: data.rfind(b"\n") + 1])
        self.process = self._start()
        replay = urllib.request.Request(
            f"{self.endpoint}/moto-api/recorder/replay-recording", method="POST"
        )
        urllib.request.urlopen(replay, timeout=60).close()


@pytest.fixture
def durable_moto(tmp_path, monkeypatch) -> Iterator[DurableMoto]:
    moto = DurableMoto(tmp_path)
    for name, value in {
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    try:
        yield moto
    finally:
        moto.kill()


@pytest.mark.slow
def test_s3_stopped_mid_load_and_restarted_still_yields_every_record(
    durable_moto, mnist8_path, tmp_path, images
):
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    server = start_server(service_env(mnist8_path, tmp_path))
    try:
        with Load(server.url, images, threads=4) as load:
            assert load.wait_for_answers(100), load.errors
            durable_moto.kill()
            outage_started = time.monotonic()
            # Answers go on while S3 is down (100 more), and the outage lasts long enough
            # for parts to fail their upload and go to the spool (4 s: 1 s flushes).
            kept_answering = load.wait_for_answers(len(load.answered) + 100)
            time.sleep(max(0.0, 4 - (time.monotonic() - outage_started)))
            durable_moto.restart()
            assert load.wait_for_answers(len(load.answered) + 100), load.errors
        assert load.errors == [], "the service failed requests while S3 was down"
        assert kept_answering, "the service stalled while S3 was down"
        ids = wait_for_records(len(load.answered), timeout=30)
        metrics = urllib.request.urlopen(server.url + "/metrics", timeout=5).read().decode()
    finally:
        server.stop()
    assert sorted(ids) == sorted(load.answered)
    assert "prediction_capture_parts_spooled_total 0.0" not in metrics
    assert "prediction_capture_records_dropped_total 0.0" in metrics


@pytest.mark.slow
def test_an_s3_outage_across_the_stop_is_bridged_within_the_stop_timeout(
    durable_moto, mnist8_path, tmp_path, images
):
    """On Fargate the spool dies with the task: the flush after SIGTERM must outlast an
    outage that is shorter than its budget, not give up at a fixed 10 s."""
    stop_timeout, outage_after_sigterm = 120, 12
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    server = start_server(
        {**service_env(mnist8_path, tmp_path), "STOP_TIMEOUT_SECONDS": str(stop_timeout)}
    )
    durable_moto.kill()
    with Load(server.url, images, threads=4, requests=100) as load:
        load.wait()
    signalled_at = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(outage_after_sigterm)
    durable_moto.restart()
    assert server.wait(timeout=stop_timeout) in (0, -signal.SIGTERM)
    assert time.monotonic() - signalled_at < stop_timeout
    assert load.errors == [] and len(load.answered) == 125
    assert sorted(captured_ids()) == sorted(load.answered)


def test_sigterm_during_load_leaves_a_record_for_every_answered_request(
    bucket, mnist8_path, tmp_path, images
):
    server = start_server(service_env(mnist8_path, tmp_path))
    with Load(server.url, images, threads=8) as load:
        # Requests in flight at the signal, and records not yet stored.
        assert load.wait_for_answers(100), load.errors
        server.process.send_signal(signal.SIGTERM)
        load.wait()
    assert server.wait(timeout=30) in (0, -signal.SIGTERM)
    ids = captured_ids()
    assert len(ids) == len(set(ids)), "a record was written twice"
    assert set(load.answered) <= set(ids), "an answered request left no record"
    assert set(ids) <= set(load.sent)


def test_two_processes_on_one_prefix_never_overwrite_each_other(
    bucket, mnist8_path, tmp_path, images
):
    servers = [start_server(service_env(mnist8_path, tmp_path, name)) for name in "ab"]
    try:
        loads = [Load(s.url, images, threads=4, requests=200) for s in servers]
        for load in loads:
            load.__enter__()
        for load in loads:
            load.wait()
    finally:
        for server in servers:
            server.stop()
    answered = loads[0].answered + loads[1].answered
    assert len(answered) == 500 and not loads[0].errors and not loads[1].errors
    assert sorted(captured_ids()) == sorted(answered)
    keys = part_keys(open_store(CAPTURE_URL), "dev")
    writers = {Path(key).name.split("-", 1)[1].rsplit("-", 1)[0] for key in keys}
    assert len(writers) == 2, f"expected parts from two processes, got {writers}"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    yield
