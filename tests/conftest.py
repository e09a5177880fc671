"""Fixtures shared by every test package: the real MNIST fixtures, a moto server, Terraform."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from bench.processes import free_port
from pipeline import REPO
from pipeline.reference import Artifact, fetch_artifact, fixtures_dir, load_reference
from service.artifacts import default_cache_dir
from tests import workers

__all__ = ["REPO", "HeldRequest", "free_port", "wait_for_http"]

DEFAULT_PLUGIN_MIRROR = "/opt/tf-plugins"


def pytest_configure(config: pytest.Config) -> None:
    # botocore looks for credentials on the EC2 metadata address (169.254.169.254) when the
    # environment has none; the tests never run on EC2 and reach 127.0.0.1 only.
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    # The tests see the reference's files only, as on a GitHub runner, where `nox -s
    # download` caches exactly the files model.toml pins and nothing else is there: a
    # directory of links to them, each taken from FIXTURES_DIR when it is set and holds
    # it (CI's ../shared/fixtures holds more), else from the download cache. It stands in for
    # FIXTURES_DIR in this process and every process a test starts: no test downloads.
    given = os.environ.get("FIXTURES_DIR")
    mirror = _mirror_of_the_reference(Path(given).resolve() if given else None)
    if mirror is not None:
        os.environ["FIXTURES_DIR"] = str(mirror)
        config.add_cleanup(lambda: _restore_fixtures_dir(given, mirror))


def _restore_fixtures_dir(given: str | None, mirror: Path) -> None:
    """Remove `mirror` and give FIXTURES_DIR back its value from before the session: a
    process that runs pytest again (mutmut runs its stats, clean and mutant runs in one)
    builds its mirror from what was given, not from this session's removed one."""
    shutil.rmtree(mirror, ignore_errors=True)
    if given is None:
        os.environ.pop("FIXTURES_DIR", None)
    else:
        os.environ["FIXTURES_DIR"] = given


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """pytest-xdist's workers take a test file at a time, podman's files together
    (tests/workers.py)."""
    return workers.make_scheduler(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    workers.heaviest_first(items)


def _reference_artifacts() -> dict[str, Artifact]:
    reference = load_reference()
    return {
        "model": reference.model,
        "images": reference.test_images,
        "labels": reference.test_labels,
    }


def _mirror_of_the_reference(source: Path | None) -> Path | None:
    """A directory of links to the reference's files, each from `source` (a FIXTURES_DIR)
    when it is there, else from the download cache (where `nox -s download` puts a file
    FIXTURES_DIR lacks); None when neither holds any (the fixture `reference_files` then
    names what is missing)."""
    found = {}
    for artifact in _reference_artifacts().values():
        places = [default_cache_dir() / str(artifact.sha256) / artifact.filename]
        if source is not None:
            places.insert(0, source / artifact.filename)
        path = next((place for place in places if place.is_file()), None)
        if path is not None:
            found[artifact.filename] = path
    if not found:
        return None
    mirror = Path(tempfile.mkdtemp(prefix="onnx-ship-fixtures-"))
    for name, path in found.items():
        (mirror / name).symlink_to(path)
    return mirror


def wait_for_http(url: str, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class HeldRequest:
    """A POST held in flight: its request line, headers and all of its body but the last
    byte are sent at once (the body from a thread, so a server that reads it slowly does
    not block the caller); the server answers only after `finish`.

    Once `confirm_received` has returned, the server has parsed the headers of every held
    request on it, so uvicorn counts them in flight: its loop handled those sockets, which
    were readable first, before it answered the probe.
    """

    def __init__(self, url: str, path: str, body: bytes, headers: dict[str, str] | None = None):
        parsed = urllib.parse.urlparse(url)
        self._socket = socket.create_connection((parsed.hostname, parsed.port), timeout=120)
        fields = {
            "Host": parsed.netloc,
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            **(headers or {}),
        }
        head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        self._socket.sendall(head.encode() + b"\r\n")
        self._last = body[-1:]
        self._sender = threading.Thread(target=self._socket.sendall, args=(body[:-1],))
        self._sender.start()

    @staticmethod
    def confirm_received(url: str) -> None:
        """Return once the server at `url` answered a readiness probe sent after the heads."""
        wait_for_http(url + "/v2/health/ready")

    @staticmethod
    def wait_until_refused(url: str, timeout: float = 30.0) -> None:
        """Return once the server at `url` refuses new connections: a uvicorn that has
        begun its shutdown has closed its listening socket first."""
        parsed = urllib.parse.urlparse(url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection((parsed.hostname, parsed.port), timeout=1).close()
            except ConnectionRefusedError:
                return
            time.sleep(0.01)
        raise TimeoutError(f"{url} still accepted connections after {timeout}s")

    def finish(self) -> tuple[int, bytes]:
        """Send the last byte; return the status and body of the answer."""
        self._sender.join(timeout=120)
        if self._sender.is_alive():
            raise TimeoutError("the server did not read the held body within 120 s")
        self._socket.sendall(self._last)
        response = http.client.HTTPResponse(self._socket)
        try:
            response.begin()
            return response.status, response.read()
        finally:
            response.close()
            self._socket.close()


@pytest.fixture(scope="session")
def reference_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The committed reference's model and MNIST test set, verified by sha256.

    Taken from FIXTURES_DIR (CI points it at ../shared/fixtures), else from what
    `nox -s download` cached, through the directory of links `pytest_configure` makes;
    never downloaded here. A missing file fails the tests that need it, naming the file
    and how to get it.
    """
    mirror = fixtures_dir()
    artifacts = _reference_artifacts()
    missing = [
        artifact.filename
        for artifact in artifacts.values()
        if mirror is None or not (mirror / artifact.filename).is_file()
    ]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not in FIXTURES_DIR or the download cache: run "
            "`nox -s download` (it fetches and "
            "caches the files model.toml pins), or set FIXTURES_DIR to a directory holding "
            "them; the tests never download",
            pytrace=False,
        )
    return {role: fetch_artifact(artifact) for role, artifact in artifacts.items()}


@pytest.fixture(scope="session")
def mnist8_path(reference_files: dict[str, Path]) -> Path:
    return reference_files["model"]


@pytest.fixture(scope="session")
def mnist_test_set(reference_files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """The first 1,000 MNIST t10k images (uint8 [N,28,28]) and labels."""
    from pipeline.datasets import read_idx_images, read_idx_labels

    images = read_idx_images(reference_files["images"])[:1000]
    labels = read_idx_labels(reference_files["labels"])[:1000]
    return images, labels


class MotoServer:
    def __init__(self, endpoint: str, process: subprocess.Popen) -> None:
        self.endpoint = endpoint
        self.process = process

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    @contextmanager
    def enforcing_iam(self) -> Iterator[None]:
        """Every request in the block is authenticated and authorised against moto's IAM.

        `POST /moto-api/reset-auth` with the count of requests still let through (0),
        as text/plain (a form body arrives empty); `inf` switches it off again, so
        the tests that share this server keep moto's all-powerful test keys.
        """
        self._reset_auth("0")
        try:
            yield
        finally:
            self._reset_auth("inf")

    def _reset_auth(self, count: str) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(request, timeout=10).close()

    def user(self, name: str, statements: list[dict]) -> dict[str, str]:
        """An IAM user allowed `statements`, as boto3 keyword arguments for its keys."""
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        iam.create_user(UserName=name)
        document = {"Version": "2012-10-17", "Statement": statements}
        iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(document))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {
            "aws_access_key_id": key["AccessKeyId"],
            "aws_secret_access_key": key["SecretAccessKey"],
        }


def start_moto(port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A real moto server on 127.0.0.1, reached through boto3's AWS_ENDPOINT_URL."""
    port = free_port()
    process = start_moto(port, {"MOTO_ECS_SERVICE_RUNNING": "1"})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{endpoint}/moto-api/", process=process)
        yield MotoServer(endpoint, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """AWS credentials and endpoint pointing at a freshly reset moto server."""
    moto_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield moto_server


# -- Terraform: the binary and its provider mirror (terraform and image tests) --------------


def require_tool(message: str, path: str | None) -> str:
    """`path` if the tool is there; otherwise skip locally with `message`, fail in CI."""
    if path and Path(path).is_file():
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def terraform_bin(terraform_cli_config: Path | None) -> str:
    """The terraform binary, pointed at the provider mirror when there is one."""
    from pipeline import terraform

    try:
        return terraform.binary()
    except terraform.TerraformError as error:
        return require_tool(str(error), None)


@pytest.fixture(scope="session")
def terraform_cli_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """Point Terraform at the local provider mirror (TF_PLUGIN_MIRROR) when there is one.

    Without a mirror Terraform uses the registry as usual, so the tests run
    wherever the registry is reachable.
    """
    mirror = Path(os.environ.get("TF_PLUGIN_MIRROR", DEFAULT_PLUGIN_MIRROR))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TF_IN_AUTOMATION", "1")
        patch.setenv("CHECKPOINT_DISABLE", "1")
        if not mirror.is_dir():
            yield None
            return
        config = tmp_path_factory.mktemp("terraform-cli") / "terraformrc"
        config.write_text(
            f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n'
        )
        patch.setenv("TF_CLI_CONFIG_FILE", str(config))
        yield config
