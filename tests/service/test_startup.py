"""A missing, corrupted or mismatched model stops the service with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.service.conftest import MNIST8_SHA256

pytestmark = pytest.mark.integration


def run_service(
    env: dict[str, str], module: list[str] | None = None
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", *(module or ["service"])]
    return subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PORT": str(free_port()), **env},
    )


def test_wrong_sha256_refuses_to_start_naming_both_hashes(mnist8_path, tmp_path):
    wrong = "a" * 64
    result = run_service(
        {"MODEL_URL": str(mnist8_path), "MODEL_SHA256": wrong, "MODEL_CACHE_DIR": str(tmp_path)}
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert wrong in line and MNIST8_SHA256 in line


def test_truncated_model_refuses_to_start(mnist8_path: Path, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(mnist8_path.read_bytes()[:5000])
    result = run_service({"MODEL_URL": str(truncated)})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "not a loadable ONNX model" in line


def test_not_an_onnx_file_refuses_to_start(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("hello, I am not a model\n")
    result = run_service({"MODEL_URL": str(text)})
    assert result.returncode == 2
    assert "not a loadable ONNX model" in result.stderr


def test_missing_model_url_says_what_to_set():
    env = {k: v for k, v in os.environ.items() if k != "MODEL_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "MODEL_URL is not set" in result.stderr


def test_plain_uvicorn_also_refuses_a_bad_model(mnist8_path, tmp_path):
    result = run_service(
        {"MODEL_URL": str(mnist8_path), "MODEL_SHA256": "b" * 64, "MODEL_CACHE_DIR": str(tmp_path)},
        module=["uvicorn", "service.asgi:app", "--port", str(free_port())],
    )
    assert result.returncode != 0
    assert "sha256 mismatch" in result.stdout + result.stderr
