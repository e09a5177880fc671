"""Where parts go: a local directory (or `file://` URL) or `s3://bucket/prefix`.

A sink writes each part whole under `<root>/<key>` and never overwrites one:
writing a key that already exists is a success that changes nothing
(`put` returns False), so uploading the same part twice (a retry after a
lost response, two processes draining one spool) cannot duplicate or clobber
records. The store (`service.store`) makes that a conditional write on S3
(`If-None-Match: *`) and a hard link on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from service import aws
from service.capture.partformat import CONTENT_TYPE as PART_CONTENT_TYPE
from service.store import LocalStore, NotAStore, Store, open_store, write_new_file

__all__ = ["LocalSink", "Sink", "SinkError", "StoreSink", "open_sink", "write_new_file"]

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
        return StoreSink(open_store(url, s3_client=_s3_client))
    except NotAStore:
        raise SinkError(
            f"PREDICTION_LOG_URL={url!r}: use a local directory, a file:// URL or s3://bucket/prefix"
        ) from None
    except ValueError as exc:
        raise SinkError(f"PREDICTION_LOG_URL: {exc}") from None


class StoreSink:
    """Parts as new objects of a store: `put` is the store's `put_new`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.url = store.url

    def put(self, key: str, body: bytes) -> bool:
        return self.store.put_new(key, body, PART_CONTENT_TYPE)


class LocalSink(StoreSink):
    """Parts as files under `root`."""

    def __init__(self, root: Path) -> None:
        super().__init__(LocalStore(root))


def _s3_client() -> Any:
    return aws.client(
        "s3",
        total_attempts=S3_MAX_ATTEMPTS,
        connect_timeout=S3_CONNECT_TIMEOUT_SECONDS,
        read_timeout=S3_READ_TIMEOUT_SECONDS,
        max_pool_connections=2,
    )
