"""Fetch by reference: local, file://, s3:// (moto server) and http(s)://, with sha256 proof."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import boto3
import pytest

from service.artifacts import ArtifactError, ChecksumMismatch, fetch, s3_location

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


def test_a_local_mismatch_names_the_reference(local_file, tmp_path):
    with pytest.raises(ChecksumMismatch) as error:
        fetch(local_file.as_uri(), sha256="3" * 64, cache_dir=tmp_path)
    assert error.value.source == local_file.as_uri()
    assert str(error.value).startswith(f"sha256 mismatch for {local_file.as_uri()}: ")


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
            if self.path.startswith("/watch/"):
                # Answers with what the cache directory named in the path holds meanwhile.
                watched = Path("/" + self.path.removeprefix("/watch/"))
                body = "\n".join(sorted(p.name for p in watched.iterdir())).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if self.path in ("/model.onnx", "/"):
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


def test_a_server_that_stops_answering_fails_the_download_instead_of_holding_it(
    tmp_path, monkeypatch
):
    """The connection is taken (the kernel's backlog) but no answer ever comes: the
    download gives up after HTTP_TIMEOUT_SECONDS and says so, rather than waiting forever."""
    import service.artifacts as artifacts

    monkeypatch.setattr(artifacts, "HTTP_TIMEOUT_SECONDS", 0.2)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/model.onnx"
        with pytest.raises(ArtifactError) as raised:
            fetch(url, cache_dir=tmp_path)
    assert str(raised.value) == f"{url}: download failed: timed out"


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


# -- S3 downloads in this process (moto's mock_aws; botocore's Stubber for the refusals
#    moto does not give) and the cache's layout, every message whole.


def test_an_s3_download_lands_in_the_cache_by_content_hash_in_process(s3_in_process, tmp_path):
    s3_in_process.create_bucket(Bucket="models")
    s3_in_process.put_object(Bucket="models", Key="mnist/model.onnx", Body=PAYLOAD)
    path, digest = fetch("s3://models/mnist/model.onnx", cache_dir=tmp_path / "cache")
    assert (path, digest) == (tmp_path / "cache" / DIGEST / "model.onnx", DIGEST)
    assert path.read_bytes() == PAYLOAD
    # Nothing else is left in the cache: the temporary download became the cached file.
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "cache",
        f"cache/{DIGEST}",
        f"cache/{DIGEST}/model.onnx",
    ]
    # An upper-case sha256 names the same bytes: served from the cache, S3 not asked.
    s3_in_process.delete_object(Bucket="models", Key="mnist/model.onnx")
    again = fetch(
        "s3://models/mnist/model.onnx", sha256=DIGEST.upper(), cache_dir=tmp_path / "cache"
    )
    assert again == (path, DIGEST)


def test_an_s3_object_or_bucket_that_is_not_there_is_named(s3_in_process, tmp_path):
    s3_in_process.create_bucket(Bucket="models")
    for url in ("s3://models/absent.onnx", "s3://no-such-bucket/m.onnx"):
        with pytest.raises(ArtifactError) as raised:
            fetch(url, cache_dir=tmp_path)
        assert str(raised.value) == f"{url}: no such object in S3. Check the bucket and key."
    assert [p.name for p in tmp_path.iterdir()] == [], "a failed download leaves nothing"


def test_a_mismatched_s3_download_is_refused_and_not_cached(s3_in_process, tmp_path):
    s3_in_process.create_bucket(Bucket="models")
    s3_in_process.put_object(Bucket="models", Key="m.onnx", Body=PAYLOAD)
    with pytest.raises(ChecksumMismatch) as raised:
        fetch("s3://models/m.onnx", sha256="1" * 64, cache_dir=tmp_path)
    assert (raised.value.expected, raised.value.actual) == ("1" * 64, DIGEST)
    assert raised.value.source == "s3://models/m.onnx"
    assert str(raised.value) == (
        f"sha256 mismatch for s3://models/m.onnx: expected {'1' * 64}, got {DIGEST}. "
        "The file changed or the reference is wrong; fix the URL or the sha256."
    )
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("url", ["s3://models/", "s3:///model.onnx"])
def test_an_s3_url_without_bucket_or_key_says_how_to_write_it(url, tmp_path):
    with pytest.raises(ArtifactError) as raised:
        fetch(url, cache_dir=tmp_path)
    assert str(raised.value) == f"{url}: an S3 URL needs a bucket and a key, s3://bucket/key."


def _s3_answering(monkeypatch, code: str, status: int):
    """boto3.client("s3") as the download makes it, answering HeadObject with an error."""
    import boto3
    from botocore.stub import Stubber

    real_client = boto3.client

    def client(service, *args, **kwargs):
        made = real_client(
            service, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
        )
        stubber = Stubber(made)
        stubber.add_client_error("head_object", code, "refused", status)
        stubber.activate()
        return made

    monkeypatch.setattr(boto3, "client", client)


@pytest.mark.parametrize("code", ["403", "AccessDenied"])
def test_a_refused_s3_download_names_the_missing_permission(monkeypatch, tmp_path, code):
    _s3_answering(monkeypatch, code, 403)
    with pytest.raises(ArtifactError) as raised:
        fetch("s3://models/m.onnx", cache_dir=tmp_path)
    assert str(raised.value) == (
        f"s3://models/m.onnx: S3 refused the download ({code}): the object is missing, or this "
        "role may not s3:GetObject it (pipeline/aws_calls.py lists what each role may read)"
    )


@pytest.mark.parametrize("code", ["404", "NoSuchKey", "NoSuchBucket"])
def test_every_s3_code_for_not_there_reads_as_no_such_object(monkeypatch, tmp_path, code):
    _s3_answering(monkeypatch, code, 404)
    with pytest.raises(ArtifactError, match=r"^s3://models/m.onnx: no such object in S3\."):
        fetch("s3://models/m.onnx", cache_dir=tmp_path)


def test_any_other_s3_refusal_is_named_with_its_code(monkeypatch, tmp_path):
    _s3_answering(monkeypatch, "InvalidObjectState", 400)
    with pytest.raises(ArtifactError) as raised:
        fetch("s3://models/m.onnx", cache_dir=tmp_path)
    assert str(raised.value).startswith(
        "s3://models/m.onnx: S3 refused the download (InvalidObjectState): An error occurred "
        "(InvalidObjectState) when calling the HeadObject operation: refused"
    )


def test_an_unreachable_s3_is_named(monkeypatch, tmp_path):
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "t")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "t")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(ArtifactError) as raised:
        fetch("s3://models/m.onnx", cache_dir=tmp_path)
    assert str(raised.value).startswith(
        "s3://models/m.onnx: could not reach S3: Could not connect to the endpoint URL"
    )


# -- HTTP downloads and the cache


def test_an_http_download_without_a_file_name_is_cached_as_artifact(http_server, tmp_path):
    base, _ = http_server
    path, digest = fetch(f"{base}/", cache_dir=tmp_path)
    assert (path, digest) == (tmp_path / DIGEST / "artifact", DIGEST)
    assert path.read_bytes() == PAYLOAD


def test_http_errors_are_named_whole(http_server, tmp_path):
    from tests.conftest import free_port

    base, _ = http_server
    with pytest.raises(ArtifactError) as raised:
        fetch(f"{base}/absent.onnx", cache_dir=tmp_path)
    assert str(raised.value) == f"{base}/absent.onnx: HTTP 404 Not Found."
    closed = f"http://127.0.0.1:{free_port()}/m.onnx"
    with pytest.raises(ArtifactError) as raised:
        fetch(closed, cache_dir=tmp_path)
    assert str(raised.value).startswith(f"{closed}: download failed: <urlopen error")
    assert "Connection refused" in str(raised.value)
    assert not list(tmp_path.glob(".download-*")), "a failed download leaves no temporary file"


def test_a_mismatched_http_download_is_not_cached(http_server, tmp_path):
    base, _ = http_server
    with pytest.raises(ChecksumMismatch):
        fetch(f"{base}/model.onnx", sha256="2" * 64, cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_one_letter_scheme_is_no_local_path_off_windows(tmp_path):
    with pytest.raises(ArtifactError) as raised:
        fetch("c://host/model.onnx", cache_dir=tmp_path)
    assert str(raised.value) == (
        "c://host/model.onnx: unsupported scheme 'c'; use a path, file://, s3:// or https://."
    )


def test_a_file_url_is_read_from_its_path_and_a_missing_one_is_named(local_file, tmp_path):
    from service.artifacts import local_path

    assert local_path(local_file.as_uri()) == local_file
    assert local_path("relative/model.onnx") == Path("relative/model.onnx")
    assert local_path("s3://b/k") is None
    missing = (tmp_path / "absent.onnx").as_uri()
    with pytest.raises(ArtifactError) as raised:
        fetch(missing, cache_dir=tmp_path)
    assert str(raised.value) == f"{missing}: no such file. Check the path or URL."


def test_a_file_bigger_than_a_read_chunk_hashes_whole(tmp_path):
    from service.artifacts import sha256_of

    path = tmp_path / "big"
    data = bytes(range(256)) * 8193  # a little over two 1 MiB chunks
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()


def test_the_default_cache_is_under_xdg_cache_home_else_the_home_cache(monkeypatch, tmp_path):
    from service.artifacts import default_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "onnx-ship"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "onnx-ship"


def test_a_default_cache_download_goes_under_xdg_cache_home(http_server, monkeypatch, tmp_path):
    base, _ = http_server
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path, _ = fetch(f"{base}/model.onnx")
    assert path == tmp_path / "onnx-ship" / DIGEST / "model.onnx"


def test_a_download_is_written_beside_the_cache_under_a_hidden_name_until_verified(
    http_server, tmp_path
):
    """The bytes land in the cache directory itself (so the final rename stays on one file
    system) under a dot name no `<sha256>/<name>` lookup can match, in a cache directory made
    with all its parents."""
    base, _ = http_server
    cache = tmp_path / "new" / "cache"
    path, _ = fetch(f"{base}/watch{cache}", cache_dir=cache)
    (in_flight,) = path.read_text().splitlines()
    assert in_flight.startswith(".download-")
    assert [p.name for p in cache.iterdir()] == [path.parent.name]


def test_an_s3_key_is_the_path_after_the_bucket_whatever_it_starts_with(s3_in_process, tmp_path):
    s3_in_process.create_bucket(Bucket="models")
    s3_in_process.put_object(Bucket="models", Key="X/Xmodel.onnx", Body=PAYLOAD)
    path, digest = fetch("s3://models/X/Xmodel.onnx", cache_dir=tmp_path)
    assert (path.name, digest) == ("Xmodel.onnx", DIGEST)


def test_https_is_downloaded_like_http(tmp_path):
    from tests.conftest import free_port

    url = f"https://127.0.0.1:{free_port()}/m.onnx"
    with pytest.raises(ArtifactError) as raised:
        fetch(url, cache_dir=tmp_path)
    assert str(raised.value).startswith(f"{url}: download failed: ")


@pytest.mark.parametrize("response", [{"Error": {"Message": "no code"}}, {}])
def test_an_s3_refusal_without_a_code_is_named_with_an_empty_one(monkeypatch, tmp_path, response):
    from botocore.exceptions import ClientError

    from service import aws

    class Client:
        def download_file(self, bucket, key, target):
            raise ClientError(response, "GetObject")

    monkeypatch.setattr(aws, "client", lambda service, **settings: Client())
    with pytest.raises(ArtifactError) as raised:
        fetch("s3://models/m.onnx", cache_dir=tmp_path)
    assert str(raised.value).startswith("s3://models/m.onnx: S3 refused the download (): ")


@pytest.mark.parametrize("bucket", ["bad bucket", "b", "-models", "models-", "mödels"])
def test_an_s3_url_whose_bucket_is_no_bucket_name_is_refused_in_one_line(bucket, tmp_path):
    """S3 User Guide, "General purpose bucket naming rules"; botocore would otherwise
    answer with its validation regexes across several lines."""
    url = f"s3://{bucket}/model.onnx"
    with pytest.raises(ArtifactError) as raised:
        fetch(url, cache_dir=tmp_path)
    assert str(raised.value) == (
        f"{url!r}: {bucket!r} is not an S3 bucket name (3 to 63 lowercase letters, digits, "
        "dots and hyphens, beginning and ending with a letter or digit): fix the URL."
    )


@pytest.mark.parametrize("bucket", ["abc", "my.models-2", "Legacy_Bucket", "a" * 255])
def test_bucket_names_s3_accepts_keep_their_place_in_the_url(bucket):
    """Lowercase names, and the capitals, underscores and lengths up to 255 of buckets made
    in us-east-1 before 2018-03-01 (the same guide's legacy rules)."""
    assert s3_location(f"s3://{bucket}/some/prefix/") == (bucket, "some/prefix")
