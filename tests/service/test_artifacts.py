"""Fetch by reference: local, file://, s3:// (moto server) and http(s)://, with sha256 proof."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import boto3
import pytest

from service.artifacts import ArtifactError, ChecksumMismatch, fetch

PAYLOAD = b"not really a model, but bytes with a known hash"
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def local_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(PAYLOAD)
    return path


def test_local_path_and_file_url_are_read_in_place(local_file, tmp_path):
    assert fetch(str(local_file), sha256=DIGEST, cache_dir=tmp_path / "c") == (local_file, DIGEST)
    assert fetch(local_file.as_uri(), cache_dir=tmp_path / "c") == (local_file, DIGEST)


def test_mismatch_names_both_hashes(local_file, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as error:
        fetch(str(local_file), sha256=wrong, cache_dir=tmp_path)
    assert wrong in str(error.value) and DIGEST in str(error.value)


def test_missing_file_and_unknown_scheme(tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        fetch(str(tmp_path / "absent.onnx"), cache_dir=tmp_path)
    with pytest.raises(ArtifactError, match="unsupported scheme"):
        fetch("ftp://host/model.onnx", cache_dir=tmp_path)


@pytest.mark.integration
def test_s3_download_is_cached_by_content_hash(aws, tmp_path):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    s3.put_object(Bucket="models", Key="mnist/model.onnx", Body=PAYLOAD)
    path, digest = fetch("s3://models/mnist/model.onnx", sha256=DIGEST, cache_dir=tmp_path)
    assert digest == DIGEST
    assert path == tmp_path / DIGEST / "model.onnx"
    assert path.read_bytes() == PAYLOAD
    s3.delete_object(Bucket="models", Key="mnist/model.onnx")
    assert fetch("s3://models/mnist/model.onnx", sha256=DIGEST, cache_dir=tmp_path)[0] == path


@pytest.mark.integration
def test_s3_missing_object_and_mismatch(aws, tmp_path):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    with pytest.raises(ArtifactError, match="no such object"):
        fetch("s3://models/absent.onnx", cache_dir=tmp_path)
    s3.put_object(Bucket="models", Key="m.onnx", Body=PAYLOAD)
    with pytest.raises(ChecksumMismatch):
        fetch("s3://models/m.onnx", sha256="1" * 64, cache_dir=tmp_path)
    assert not list(tmp_path.glob("*/m.onnx")), "a mismatched download must not be cached"


@pytest.fixture
def http_server():
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            if self.path == "/model.onnx":
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD)
            else:
                self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()


def test_http_download_once_then_cache(http_server, tmp_path):
    base, hits = http_server
    first = fetch(f"{base}/model.onnx", sha256=DIGEST, cache_dir=tmp_path)
    second = fetch(f"{base}/model.onnx", sha256=DIGEST, cache_dir=tmp_path)
    assert first == second
    assert hits == ["/model.onnx"]
    with pytest.raises(ArtifactError, match="HTTP 404"):
        fetch(f"{base}/absent.onnx", cache_dir=tmp_path)


def test_a_cached_download_changed_on_disk_is_hashed_again_and_fetched_anew(http_server, tmp_path):
    base, hits = http_server
    path, _ = fetch(f"{base}/model.onnx", sha256=DIGEST, cache_dir=tmp_path)
    path.write_bytes(b"changed after the download")
    again, digest = fetch(f"{base}/model.onnx", sha256=DIGEST, cache_dir=tmp_path)
    assert (again, digest) == (path, DIGEST)
    assert again.read_bytes() == PAYLOAD
    assert hits == ["/model.onnx", "/model.onnx"]
