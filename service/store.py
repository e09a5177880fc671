"""A store of whole objects under one root: an S3 prefix or a local directory.

The one reading of "a URL that names an S3 prefix or a local directory" for
every store of the project: the prediction capture writes its parts here, the
pipeline reads them back and keeps its deployment records here. Keys are
`/`-separated paths relative to the store's root.

- `put_new(key, body, content_type)` writes an object only if the key is free:
  S3's conditional write (`If-None-Match: *`, S3 API reference, PutObject), a
  hard link on disk. It returns False, changing nothing, when the key exists.
- `put_new_stream(key, chunks, content_type)` is `put_new` of an object too large
  to hold in memory, written as its chunks come (an S3 multipart upload).
- `put(key, body, content_type)` writes or replaces an object whole.
- `read(key)` is the object's bytes, or None when there is no such key;
  `sha256(key)` its SHA-256, read a chunk at a time.
- `list(prefix)` is every key under `prefix`, at any depth; `entries(prefix)` the
  same with each object's size and last-modified time.
- `delete(keys)` removes objects; a key that is already gone is no error.

Every S3 failure becomes a `StoreError` whose text is botocore's own, with the
S3 error code in `code` (`NoSuchBucket` as `NoSuchBucket`, network and
credential failures as `StoreUnreachable`); callers word their messages from it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from service import aws
from service.artifacts import local_path, s3_location

# S3's answers for "no object under this key" (GetObject: NoSuchKey; HeadObject: 404).
MISSING_CODES = ("404", "NoSuchKey", "NotFound")
# DeleteObjects takes at most 1,000 keys a request (S3 API reference, DeleteObjects).
DELETE_BATCH = 1000
# A multipart upload's parts: at least 5 MiB each but the last, at most 10,000 of them
# (S3 user guide, "Amazon S3 multipart upload limits"): 8 MiB parts hold objects up to
# 78 GiB while a stream holds one part in memory.
STREAM_PART_BYTES = 8 * 1024 * 1024
# Reads in pieces of this size (`sha256`).
READ_CHUNK_BYTES = 1024 * 1024
# A conditional write that meets a concurrent one on the same key gets 409
# ConditionalRequestConflict, which botocore does not retry and S3 asks the caller to
# retry (S3 API reference, PutObject and CompleteMultipartUpload, If-None-Match).
CONFLICT_ATTEMPTS = 3
CONFLICT_CODE = "ConditionalRequestConflict"


@dataclass(frozen=True)
class Entry:
    """One object of a listing: its key (relative to the store's root), its size in
    bytes and when it was last written (UTC; S3's LastModified, the file's mtime)."""

    key: str
    size: int
    modified: datetime


class NotAStore(ValueError):
    """The URL names neither a local directory (path or file://) nor s3://bucket/prefix."""


class StoreError(Exception):
    """S3 refused a request; `code` is its error code (or the exception's class name)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class NoSuchBucket(StoreError):
    """The store's bucket does not exist."""


class StoreUnreachable(StoreError):
    """S3 could not be reached (network, endpoint, credentials, region)."""


class Store(Protocol):
    url: str

    def put_new(self, key: str, body: bytes, content_type: str) -> bool: ...

    def put_new_stream(
        self, key: str, chunks: Callable[[], Iterable[bytes]], content_type: str
    ) -> bool: ...

    def put(self, key: str, body: bytes, content_type: str) -> None: ...

    def read(self, key: str) -> bytes | None: ...

    def sha256(self, key: str) -> bytes | None: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def entries(self, prefix: str = "") -> list[Entry]: ...

    def delete(self, keys: list[str]) -> None: ...


def open_store(url: str, *, s3_client: Callable[[], Any] | None = None) -> LocalStore | S3Store:
    """The store `url` names; no network access happens here.

    `s3_client` makes the boto3 S3 client (default: `service.aws.client("s3")`, which reads
    AWS_ENDPOINT_URL, credentials and region from the environment). Raises ValueError
    for an S3 URL without a bucket and NotAStore for any URL that is neither.
    """
    location = s3_location(url)
    if location is not None:
        return S3Store(*location, client=(s3_client or _default_client)())
    path = local_path(url)
    if path is None:
        raise NotAStore(f"{url!r} is not a local directory, file:// URL or s3://bucket/prefix")
    return LocalStore(path)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError, or of the one boto3's upload wrapped."""
    from botocore.exceptions import ClientError

    for error in (exc, exc.__cause__, exc.__context__):
        if isinstance(error, ClientError):
            return aws.error_code(error)
    return ""


def store_error(exc: BaseException) -> StoreError:
    """The StoreError for a failed S3 request: the one mapping of botocore's exceptions."""
    from botocore.exceptions import BotoCoreError

    if isinstance(exc, BotoCoreError):
        return StoreUnreachable(aws.explain(exc))
    code = error_code(exc)
    kind = NoSuchBucket if code == "NoSuchBucket" else StoreError
    return kind(str(exc), code or type(exc).__name__)


def write_new_file(path: Path, body: bytes | Iterable[bytes]) -> bool:
    """Write `path` whole and durably (from its bytes, or its chunks in order), never
    replacing an existing file; False if it existed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with temporary.open("wb") as handle:
            for chunk in (body,) if isinstance(body, bytes | bytearray | memoryview) else body:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)


class LocalStore:
    """A directory; keys are paths below it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def put_new(self, key: str, body: bytes, content_type: str = "") -> bool:
        return write_new_file(self.root / key, body)

    def put_new_stream(
        self, key: str, chunks: Callable[[], Iterable[bytes]], content_type: str = ""
    ) -> bool:
        return write_new_file(self.root / key, chunks())

    def put(self, key: str, body: bytes, content_type: str = "") -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(body)
        temporary.replace(path)

    def read(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def sha256(self, key: str) -> bytes | None:
        path = self.root / key
        if not path.is_file():
            return None
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").digest()

    def list(self, prefix: str = "") -> list[str]:
        return [entry.key for entry in self.entries(prefix)]

    def entries(self, prefix: str = "") -> list[Entry]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        found = []
        for path in base.rglob("*"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed while listed
                continue
            if path.is_file():
                modified = datetime.fromtimestamp(stat.st_mtime, UTC)
                found.append(Entry(path.relative_to(self.root).as_posix(), stat.st_size, modified))
        return found

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            (self.root / key).unlink(missing_ok=True)


class S3Store:
    """`s3://bucket/prefix`; keys are object keys below the prefix."""

    def __init__(self, bucket: str, prefix: str, *, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.client = client

    def key(self, key: str) -> str:
        """The object key of `key`: below the store's prefix."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def url_of(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.key(key)}"

    def put_new(self, key: str, body: bytes, content_type: str) -> bool:
        return self._conditionally(
            lambda: self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(key),
                Body=body,
                ContentType=content_type,
                IfNoneMatch="*",
            )
        )

    def put_new_stream(
        self, key: str, chunks: Callable[[], Iterable[bytes]], content_type: str
    ) -> bool:
        """A multipart upload of `chunks()` in parts of STREAM_PART_BYTES, each with its
        SHA-256 checksum, completed with `If-None-Match: *` (S3 API reference,
        CompleteMultipartUpload). `chunks` is called again for each attempt: on a 409 S3
        asks for a new upload of every part. Any failure aborts the upload (needs
        s3:AbortMultipartUpload; the bucket's lifecycle rule removes one an abort missed)."""
        return self._conditionally(lambda: self._multipart(key, chunks(), content_type))

    def _multipart(self, key: str, chunks: Iterable[bytes], content_type: str) -> None:
        target = {"Bucket": self.bucket, "Key": self.key(key)}
        upload = self.client.create_multipart_upload(
            **target, ContentType=content_type, ChecksumAlgorithm="SHA256"
        )["UploadId"]
        try:
            done = []
            for number, body in enumerate(_pieces(chunks, STREAM_PART_BYTES), start=1):
                answer = self.client.upload_part(
                    **target,
                    UploadId=upload,
                    PartNumber=number,
                    Body=body,
                    ChecksumAlgorithm="SHA256",
                )
                done.append(
                    {
                        "PartNumber": number,
                        "ETag": answer["ETag"],
                        "ChecksumSHA256": answer["ChecksumSHA256"],
                    }
                )
            self.client.complete_multipart_upload(
                **target, UploadId=upload, MultipartUpload={"Parts": done}, IfNoneMatch="*"
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(**target, UploadId=upload)
            except _s3_errors():
                pass  # the lifecycle rule's abort_incomplete_multipart_upload removes it
            raise

    def _conditionally(self, write: Callable[[], object]) -> bool:
        """Run a conditional write: True once written, False when the key exists (412
        PreconditionFailed); a 409 ConditionalRequestConflict is tried again."""
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                write()
            except _s3_errors() as exc:
                code = error_code(exc)
                if code == "PreconditionFailed":
                    return False
                if code == CONFLICT_CODE and attempt < CONFLICT_ATTEMPTS:
                    continue
                raise store_error(exc) from exc
            return True
        raise AssertionError("unreachable")

    def put(self, key: str, body: bytes, content_type: str) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key(key), Body=body, ContentType=content_type
            )
        except _s3_errors() as exc:
            raise store_error(exc) from exc

    def read(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(key))["Body"].read()
        except _s3_errors() as exc:
            if error_code(exc) in MISSING_CODES:
                return None
            raise store_error(exc) from exc

    def sha256(self, key: str) -> bytes | None:
        """The object's SHA-256, read READ_CHUNK_BYTES at a time; None when it is missing."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(key))["Body"]
            digest = hashlib.sha256()
            for chunk in body.iter_chunks(READ_CHUNK_BYTES):
                digest.update(chunk)
        except _s3_errors() as exc:
            if error_code(exc) in MISSING_CODES:
                return None
            raise store_error(exc) from exc
        return digest.digest()

    def exists(self, key: str) -> bool:
        """HeadObject: is there an object under `key`? (A missing key is a 404 only to a
        caller with s3:ListBucket; S3 API reference, HeadObject.)"""
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(key))
        except _s3_errors() as exc:
            if error_code(exc) in MISSING_CODES:
                return False
            raise store_error(exc) from exc
        return True

    def upload_file(self, key: str, source: Path) -> None:
        """Upload a local file under `key` (multipart when large), with an SHA-256 checksum."""
        try:
            self.client.upload_file(
                str(source), self.bucket, self.key(key), ExtraArgs={"ChecksumAlgorithm": "SHA256"}
            )
        except _s3_errors() as exc:
            raise store_error(exc) from exc

    def list(self, prefix: str = "") -> list[str]:
        return [entry.key for entry in self.entries(prefix)]

    def entries(self, prefix: str = "") -> list[Entry]:
        """ListObjectsV2, every page (1,000 keys a page)."""
        full = self.key(prefix).rstrip("/") + "/" if prefix or self.prefix else ""
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            return [
                Entry(item["Key"][strip:], item["Size"], item["LastModified"].astimezone(UTC))
                for page in pages
                for item in page.get("Contents", [])
            ]
        except _s3_errors() as exc:
            raise store_error(exc) from exc

    def delete(self, keys: list[str]) -> None:
        """DeleteObjects, up to 1,000 keys a request (S3 API reference, DeleteObjects); a key
        that does not exist counts as deleted. Needs s3:DeleteObject."""
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self.key(k)} for k in batch], "Quiet": True},
                )
            except _s3_errors() as exc:
                raise store_error(exc) from exc
            errors = answer.get("Errors", [])
            if errors:
                first = errors[0]
                raise StoreError(
                    f"deleting {len(errors)} of {len(batch)} objects failed, first "
                    f"{first.get('Key')}: {first.get('Message')}",
                    str(first.get("Code", "")),
                )


def _pieces(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """`chunks` regrouped into pieces of at least `size` bytes (the last may be smaller;
    one empty piece for no bytes at all)."""
    held: list[bytes] = []
    count = 0
    given = False
    for chunk in chunks:
        held.append(chunk)
        count += len(chunk)
        if count >= size:
            yield b"".join(held)
            held, count, given = [], 0, True
    if held or not given:
        yield b"".join(held)


def _s3_errors() -> tuple[type[Exception], ...]:
    """What botocore and boto3 raise for a failed request (imported only when S3 is used)."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, S3UploadFailedError)


def _default_client() -> Any:
    return aws.client("s3")
