"""Fetch a file by reference (path, file://, s3://, https://) and prove its sha256.

The one download/verify path of the project: the service uses it to load its
model at start-up, the pipeline uses it for the model and the test data.
Fetched bytes land in a cache keyed by content hash, so a second fetch of a
pinned reference costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from service import aws

HTTP_TIMEOUT_SECONDS = 60
# S3 User Guide, "General purpose bucket naming rules": 3 to 63 lowercase letters, digits,
# dots and hyphens, beginning and ending with a letter or digit. Buckets made in us-east-1
# before 2018-03-01 may also hold capitals and underscores and run to 255 characters (the
# guide's legacy rules, and botocore's own check), so those names pass too.
BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
_CHUNK = 1 << 20


class ArtifactError(Exception):
    """A referenced file could not be fetched or is not the file the reference names."""


class ChecksumMismatch(ArtifactError):
    def __init__(self, source: str, expected: str, actual: str) -> None:
        super().__init__(
            f"sha256 mismatch for {source}: expected {expected}, got {actual}. "
            "The file changed or the reference is wrong; fix the URL or the sha256."
        )
        self.source = source
        self.expected = expected
        self.actual = actual


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "onnx-ship"


def local_path(url: str) -> Path | None:
    """The filesystem path a reference names, or None when it is remote."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(url)
    return None


def s3_location(url: str) -> tuple[str, str] | None:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix"); None for any other URL.

    The one reading of S3 URLs for every store of the project (model, capture,
    deployment records); an S3 URL without a bucket, or whose bucket is no S3 bucket name
    (BUCKET_NAME), is a ValueError.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "s3":
        return None
    if not parsed.netloc:
        raise ValueError(f"{url!r} needs a bucket: s3://bucket/prefix")
    if not BUCKET_NAME.fullmatch(parsed.netloc):
        raise ValueError(
            f"{url!r}: {parsed.netloc!r} is not an S3 bucket name (3 to 63 lowercase letters, "
            "digits, dots and hyphens, beginning and ending with a letter or digit)"
        )
    return parsed.netloc, parsed.path.strip("/")


def fetch(
    url: str, *, sha256: str | None = None, cache_dir: Path | None = None
) -> tuple[Path, str]:
    """Return a local path holding the bytes `url` names, and their sha256.

    A local file is read in place; a remote one is downloaded once into
    `cache_dir/<sha256>/<name>`. When `sha256` is given the bytes must match it,
    or ChecksumMismatch names both hashes.
    """
    expected = sha256.lower() if sha256 else None
    path = local_path(url)
    if path is not None:
        if not path.is_file():
            raise ArtifactError(f"{url}: no such file. Check the path or URL.")
        actual = sha256_of(path)
        if expected and actual != expected:
            raise ChecksumMismatch(url, expected, actual)
        return path, actual

    cache = cache_dir or default_cache_dir()
    name = Path(urllib.parse.urlparse(url).path).name or "artifact"
    if expected:
        cached = cache / expected / name
        if cached.is_file() and sha256_of(cached) == expected:
            return cached, expected

    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=".download-")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _download(url, tmp)
        actual = sha256_of(tmp)
        if expected and actual != expected:
            raise ChecksumMismatch(url, expected, actual)
        target = cache / actual / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        return target, actual
    finally:
        tmp.unlink(missing_ok=True)


def _download(url: str, target: Path) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "s3":
        _download_s3(url, target)
    elif parsed.scheme in ("http", "https"):
        _download_http(url, target)
    else:
        raise ArtifactError(
            f"{url}: unsupported scheme {parsed.scheme!r}; use a path, file://, s3:// or https://."
        )


def _download_s3(url: str, target: Path) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        bucket, key = s3_location(url) or ("", "")
    except ValueError as exc:
        if urllib.parse.urlparse(url).netloc:  # a bucket, but no bucket's name
            raise ArtifactError(f"{exc}: fix the URL.") from None
        bucket, key = "", ""
    if not bucket or not key:
        raise ArtifactError(f"{url}: an S3 URL needs a bucket and a key, s3://bucket/key.")
    try:
        aws.client("s3").download_file(bucket, key, str(target))
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise ArtifactError(f"{url}: no such object in S3. Check the bucket and key.") from exc
        if code in ("403", "AccessDenied"):
            # A role without s3:ListBucket (the task role) gets 403 for a missing key too
            # (S3 API reference, HeadObject).
            raise ArtifactError(
                f"{url}: S3 refused the download ({code}): the object is missing, or this "
                "role may not s3:GetObject it (pipeline/aws_calls.py lists what each role may read)"
            ) from exc
        raise ArtifactError(f"{url}: S3 refused the download ({code}): {exc}") from exc
    except BotoCoreError as exc:
        raise ArtifactError(f"{url}: could not reach S3: {aws.explain(exc)}") from exc


def _download_http(url: str, target: Path) -> None:
    try:
        with (
            urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response,
            target.open("wb") as out,
        ):
            shutil.copyfileobj(response, out, _CHUNK)
    except urllib.error.HTTPError as exc:
        raise ArtifactError(f"{url}: HTTP {exc.code} {exc.reason}.") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ArtifactError(f"{url}: download failed: {exc}") from exc
