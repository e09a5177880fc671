"""Service fixtures: the real mnist-8, its settings, an in-process client and a real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from falcon import testing

from service.app import create_app
from service.config import Settings
from service.loader import load_model
from service.model import OnnxModel
from tests.conftest import REPO, free_port, wait_for_http

MNIST8_SHA256 = "2f06e72de813a8635c9bc0397ac447a601bdbfa7df4bebc278723b958831c9bf"


@pytest.fixture
def s3_in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """S3 inside this process: moto's `mock_aws` answers boto3 through botocore's event hooks
    (no socket, no server), so a mutation run that changes the code in this process is seen.
    Yields a boto3 S3 client; every client built in the block reaches the same fake S3.
    (https://docs.getmoto.org/en/latest/docs/getting_started.html, "Decorator" and "Context
    manager".)"""
    from moto import mock_aws

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        import boto3

        yield boto3.client("s3")


@pytest.fixture(scope="session")
def raw_argmax(mnist8_path: Path):
    """Classes from plain onnxruntime, one image at a time: what the service must agree with."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(mnist8_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def classes(images: np.ndarray) -> list[int]:
        return [
            int(
                session.run(None, {name: image.reshape(1, 1, 28, 28).astype(np.float32)})[
                    0
                ].argmax()
            )
            for image in images
        ]

    return classes


@pytest.fixture(scope="session")
def settings(mnist8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        model_url=str(mnist8_path),
        model_sha256=MNIST8_SHA256,
        cache_dir=tmp_path_factory.mktemp("cache"),
        prediction_log_url=str(tmp_path_factory.mktemp("predictions")),
        max_body_bytes=256 * 1024,
    )


@pytest.fixture(scope="session")
def model(settings: Settings) -> OnnxModel:
    return load_model(settings)


@pytest.fixture
def client(settings: Settings, model: OnnxModel) -> testing.TestClient:
    return testing.TestClient(create_app(settings, model=model))


class Server:
    def __init__(self, url: str, process: subprocess.Popen) -> None:
        self.url = url
        self.process = process

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 30) -> int:
        """Its exit status once it has ended, its stderr pipe closed."""
        code = self.process.wait(timeout=timeout)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code


def start_server(
    env: dict[str, str],
    ready_path: str = "/v2/health/ready",
    port: int | None = None,
    module: tuple[str, ...] = ("service",),
) -> Server:
    """`python -m <module>` (the service's own entry point unless told otherwise), with
    HOST and PORT set in its environment, once `ready_path` answers."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", *module],
        cwd=REPO,
        env={**os.environ, "HOST": "127.0.0.1", "PORT": str(port), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + ready_path, timeout=30, process=process)
    except Exception as exc:
        process.kill()
        _, stderr = process.communicate(timeout=30)  # reaped, its pipe read and closed
        exc.add_note(f"the server's stderr: {stderr.decode(errors='replace')[-2000:]}")
        raise
    return Server(url, process)


@pytest.fixture(scope="module")
def server(mnist8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`python -m service` on 127.0.0.1 serving the real mnist-8 with model.toml's labels,
    capturing locally."""
    from pipeline.reference import load_reference

    running = start_server(
        {
            "MODEL_URL": str(mnist8_path),
            "MODEL_SHA256": MNIST8_SHA256,
            "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
            "PREDICTION_LOG_URL": str(tmp_path_factory.mktemp("predictions")),
            "MODEL_LABELS": json.dumps(list(load_reference().labels)),
        }
    )
    yield running
    running.stop()


# The same server under the name the pipeline tests give what a smoke test calls.
mnist8_server = server


class ListRecorder:
    """A prediction recorder that keeps what each answered request hands it."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def record(self, **prediction: Any) -> None:
        self.records.append(prediction)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
def recorded(settings: Settings, model: OnnxModel) -> tuple[testing.TestClient, list[dict]]:
    """An in-process client whose answered predictions go to a list: (client, records)."""
    recorder = ListRecorder()
    return testing.TestClient(
        create_app(settings, model=model, recorder=recorder)
    ), recorder.records
