"""Where parts go: a local directory (or `file://` URL) or `s3://bucket/prefix`.

A sink writes each part whole under `<root>/<key>` and never overwrites one:
writing a key that already exists is a success that changes nothing
(`put` returns False), so uploading the same part twice (a retry after a
lost response, two processes draining one spool) cannot duplicate or clobber
records. S3 enforces this with a conditional write (`If-None-Match: *`).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Protocol

from service.artifacts import local_path, s3_location

# Parts are small (a few MB at most): a sink that does not answer within
# seconds is down, and the spool takes over. One quick botocore retry absorbs
# a throttle or a 5xx blip; the recorder's own backoff handles the rest.
S3_CONNECT_TIMEOUT_SECONDS = 2
S3_READ_TIMEOUT_SECONDS = 5
S3_MAX_ATTEMPTS = 2


class SinkError(Exception):
    """The sink URL is malformed; the message says how to write it."""


class Sink(Protocol):
    url: str

    def put(self, key: str, body: bytes) -> bool:
        """Write `body` at `key` unless the key exists; True when this call wrote it."""
        ...


def open_sink(url: str) -> Sink:
    """The sink a PREDICTION_LOG_URL names (no network access happens here)."""
    try:
        location = s3_location(url)
    except ValueError as exc:
        raise SinkError(f"PREDICTION_LOG_URL: {exc}") from None
    if location is not None:
        return S3Sink(*location)
    path = local_path(url)
    if path is None:
        raise SinkError(
            f"PREDICTION_LOG_URL={url!r}: use a local directory, a file:// URL or s3://bucket/prefix"
        )
    return LocalSink(path)


def write_new_file(path: Path, body: bytes) -> bool:
    """Write `path` whole and durably, never replacing an existing file; False if it existed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    with temporary.open("wb") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink()


class LocalSink:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def put(self, key: str, body: bytes) -> bool:
        return write_new_file(self.root / key, body)


class S3Sink:
    def __init__(self, bucket: str, prefix: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        # boto3 reads AWS_ENDPOINT_URL, credentials and region from the environment.
        self._client = boto3.client(
            "s3",
            config=Config(
                connect_timeout=S3_CONNECT_TIMEOUT_SECONDS,
                read_timeout=S3_READ_TIMEOUT_SECONDS,
                retries={"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS},
                max_pool_connections=2,
            ),
        )

    def put(self, key: str, body: bytes) -> bool:
        from botocore.exceptions import ClientError

        object_key = f"{self.prefix}/{key}" if self.prefix else key
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=object_key,
                Body=body,
                ContentType="application/gzip",
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                return False
            raise
        return True
