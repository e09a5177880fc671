"""A missing, corrupted or mismatched model stops the service with one clear line."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.service.conftest import MNIST8_SHA256

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def root_logging_restored():
    """`service.__main__.main()` run in-process points the root logger at this test's
    captured stdout; later tests would log to that closed stream ("--- Logging error ---")."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    logging.captureWarnings(False)
    root.handlers[:] = handlers
    root.setLevel(level)


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


def uvicorn_entry(env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_service(env, module=["uvicorn", "service.asgi:app", "--port", str(free_port())])


def test_plain_uvicorn_refuses_a_wrong_sha256_with_one_line(mnist8_path, tmp_path):
    result = uvicorn_entry(
        {"MODEL_URL": str(mnist8_path), "MODEL_SHA256": "b" * 64, "MODEL_CACHE_DIR": str(tmp_path)}
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = (result.stdout + result.stderr).strip().splitlines()
    assert line.startswith("error: model refused: sha256 mismatch")
    assert "b" * 64 in line and MNIST8_SHA256 in line


def test_plain_uvicorn_refuses_a_truncated_model_with_one_line(mnist8_path, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(mnist8_path.read_bytes()[:5000])
    result = uvicorn_entry({"MODEL_URL": str(truncated), "MODEL_CACHE_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = (result.stdout + result.stderr).strip().splitlines()
    assert line.startswith("error: ") and "not a loadable ONNX model" in line


def test_plain_uvicorn_refuses_a_bad_setting_with_one_line(mnist8_path, tmp_path):
    result = uvicorn_entry({"MODEL_URL": str(mnist8_path), "MODEL_NAME": "team/mnist"})
    assert result.returncode != 0
    (line,) = (result.stdout + result.stderr).strip().splitlines()
    assert "MODEL_NAME='team/mnist' is not a single URL path segment" in line


def test_a_model_name_the_routes_cannot_reach_stops_the_start(mnist8_path, tmp_path):
    """'team/mnist' would start and answer 404 on every model route."""
    result = run_service(
        {
            "MODEL_URL": str(mnist8_path),
            "MODEL_NAME": "team/mnist",
            "MODEL_CACHE_DIR": str(tmp_path),
        }
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: MODEL_NAME='team/mnist' is not a single URL path segment")
    assert "'team-mnist'" in line


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HOST": "no-such-host.invalid"}, "HOST='no-such-host.invalid'"),
        ({"MODEL_LABELS": '["0", "1"]'}, "MODEL_LABELS has 2 labels"),
        ({"MAX_BODY_BYTES": "1000"}, "MAX_BODY_BYTES=1000 is below one example"),
    ],
)
def test_settings_that_cannot_serve_stop_the_start_with_one_line(
    mnist8_path, tmp_path, env, message
):
    result = run_service({"MODEL_URL": str(mnist8_path), "MODEL_CACHE_DIR": str(tmp_path), **env})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert message in line


def test_a_port_in_use_stops_the_start_with_one_line(mnist8_path, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_service(
            {"MODEL_URL": str(mnist8_path), "MODEL_CACHE_DIR": str(tmp_path), "PORT": str(port)}
        )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"PORT={port}: cannot listen there" in line


def test_a_cache_dir_that_cannot_be_created_stops_with_one_line_naming_it(tmp_path):
    occupied = tmp_path / "occupied"
    occupied.write_text("a file where the cache's parent directory should be")
    cache = occupied / "model-cache"
    result = run_service(
        {"MODEL_URL": f"http://127.0.0.1:{free_port()}/mnist-8.onnx", "MODEL_CACHE_DIR": str(cache)}
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"MODEL_CACHE_DIR: cannot write {cache}" in line
    assert "volume the image declares" in line


def test_a_tmpdir_that_cannot_be_written_stops_the_start_instead_of_falling_back(tmp_path):
    """Python's tempfile quietly uses /tmp when TMPDIR cannot be written; on Fargate with a
    read-only root filesystem /tmp cannot be written either, so the start names TMPDIR."""
    occupied = tmp_path / "occupied"
    occupied.write_text("a file where the temporary directory should be")
    result = run_service(
        {
            "MODEL_URL": f"http://127.0.0.1:{free_port()}/mnist-8.onnx",
            "MODEL_CACHE_DIR": str(tmp_path / "cache"),
            "TMPDIR": str(occupied / "tmp"),
        }
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"TMPDIR: cannot write {occupied / 'tmp'}" in line


def test_an_unexpected_start_up_failure_is_one_line_too(mnist8_path, tmp_path, monkeypatch, capsys):
    """A full scratch volume, say: the path and the error, then exit status 2."""
    from service import __main__ as entry
    from service import startup

    def full_disk(settings):
        raise OSError(28, "No space left on device", str(tmp_path / ".download-x"))

    monkeypatch.setattr(startup, "load_model", full_disk)
    monkeypatch.setenv("MODEL_URL", str(mnist8_path))
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PORT", str(free_port()))  # the address check comes first
    assert entry.main([]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: cannot use {tmp_path / '.download-x'}: No space left")


def test_python_m_service_takes_no_arguments_and_says_so():
    from service import __main__ as entry

    helped = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert helped.returncode == 0 and "every setting comes from the environment" in helped.stdout
    assert entry.main(["--port", "9000"]) == 2


def test_the_supervisor_of_several_workers_keeps_no_model(mnist8_path, tmp_path, monkeypatch):
    """Each worker process loads the model from the verified cache; the process that
    checked it and supervises them holds no copy while they serve."""
    import gc
    import weakref

    import uvicorn

    from service import __main__ as entry

    loaded: list[weakref.ref] = []
    prepare = entry.prepare

    def prepare_and_watch(settings):
        model = prepare(settings)
        loaded.append(weakref.ref(model))
        return model

    alive_while_serving: list[bool] = []

    def run(app, **options):
        gc.collect()
        alive_while_serving.append(loaded[0]() is not None)

    monkeypatch.setattr(entry, "prepare", prepare_and_watch)
    monkeypatch.setattr(uvicorn, "run", run)
    for name, value in {
        "MODEL_URL": str(mnist8_path),
        "MODEL_CACHE_DIR": str(tmp_path),
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "PORT": str(free_port()),
    }.items():
        monkeypatch.setenv(name, value)
    assert entry.main([]) == 0
    assert alive_while_serving == [False]
