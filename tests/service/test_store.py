"""The one store (service/store.py): a directory or an S3 prefix, each answer compared.

The S3 tests run against moto's server on 127.0.0.1; PutObject with `If-None-Match: *`
is a conditional write that fails with 412 PreconditionFailed when the key exists
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html).
"""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from service.store import (
    LocalStore,
    NoSuchBucket,
    NotAStore,
    S3Store,
    StoreError,
    StoreUnreachable,
    error_code,
    open_store,
    store_error,
    write_new_file,
)


def test_a_local_put_new_never_replaces_and_put_does(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "root"))
    assert isinstance(store, LocalStore)
    assert store.put_new("a/b.txt", b"first") is True
    assert store.put_new("a/b.txt", b"second") is False
    assert store.read("a/b.txt") == b"first"
    store.put("a/b.txt", b"third")
    assert store.read("a/b.txt") == b"third"
    assert store.read("a/missing") is None
    assert sorted(store.list("a")) == ["a/b.txt"]
    assert store.list("nowhere") == []
    # Neither write leaves its temporary file behind.
    assert sorted(p.name for p in (tmp_path / "root" / "a").iterdir()) == ["b.txt"]


def test_write_new_file_makes_the_directories_and_refuses_an_existing_file(tmp_path: Path):
    path = tmp_path / "x" / "y" / "part.gz"
    assert write_new_file(path, b"one") is True
    assert write_new_file(path, b"two") is False
    assert path.read_bytes() == b"one"
    assert [p.name for p in path.parent.iterdir()] == ["part.gz"]


def test_urls_pick_the_store_and_anything_else_is_named() -> None:
    s3 = open_store("s3://bucket/some/prefix", s3_client=lambda: "client")
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.client) == ("bucket", "some/prefix", "client")
    assert s3.url == "s3://bucket/some/prefix"
    assert s3.key("k/1") == "some/prefix/k/1"
    assert s3.url_of("k/1") == "s3://bucket/some/prefix/k/1"
    bare = open_store("s3://bucket", s3_client=lambda: None)
    assert (bare.url, bare.key("k"), bare.url_of("k")) == ("s3://bucket", "k", "s3://bucket/k")
    local = open_store("file:///tmp/capture")
    assert isinstance(local, LocalStore) and local.root == Path("/tmp/capture")
    with pytest.raises(NotAStore, match="'https://x/y' is not a local directory"):
        open_store("https://x/y")


@pytest.mark.integration
def test_s3_put_new_never_replaces_an_object(aws) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="capture")
    store = open_store("s3://capture/dev")
    assert store.put_new("p/1.gz", b"first", "application/gzip") is True
    assert store.put_new("p/1.gz", b"second", "application/gzip") is False
    assert s3.get_object(Bucket="capture", Key="dev/p/1.gz")["Body"].read() == b"first"
    assert store.read("p/1.gz") == b"first"
    head = s3.head_object(Bucket="capture", Key="dev/p/1.gz")
    assert head["ContentType"] == "application/gzip"


@pytest.mark.integration
def test_s3_put_read_exists_list_below_the_prefix(aws, tmp_path: Path) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="store")
    s3.put_object(Bucket="store", Key="other/x", Body=b"not ours")
    store = open_store("s3://store/env")
    store.put("a/1.json", b"one", "application/json")
    store.put("a/1.json", b"two", "application/json")
    source = tmp_path / "model.onnx"
    source.write_bytes(b"model bytes")
    store.upload_file("m/model.onnx", source)
    assert store.read("a/1.json") == b"two"
    assert store.read("a/none") is None
    assert store.exists("a/1.json") is True and store.exists("a/none") is False
    assert sorted(store.list()) == ["a/1.json", "m/model.onnx"]
    assert store.list("a") == ["a/1.json"]
    assert store.read("m/model.onnx") == b"model bytes"
    bucket_wide = open_store("s3://store")
    assert sorted(bucket_wide.list()) == ["env/a/1.json", "env/m/model.onnx", "other/x"]
    assert bucket_wide.list("other") == ["other/x"]


@pytest.mark.integration
def test_s3_errors_are_store_errors_naming_the_bucket(aws) -> None:
    store = open_store("s3://no-such-bucket/env")
    for call in (
        lambda: store.put_new("k", b"", "text/plain"),
        lambda: store.put("k", b"", "text/plain"),
        lambda: store.read("k"),
        lambda: store.list(),
    ):
        with pytest.raises(NoSuchBucket) as raised:
            call()
        assert raised.value.code == "NoSuchBucket"
        assert isinstance(raised.value, StoreError)


# -- The S3 store in this process (moto's mock_aws; botocore's Stubber where moto cannot
#    answer as S3 does): what a mutation run sees, and the answers compared whole.


def test_s3_put_new_writes_once_below_the_prefix_with_its_content_type(s3_in_process):
    s3_in_process.create_bucket(Bucket="capture")
    store = open_store("s3://capture/dev")
    assert store.put_new("p/1.gz", b"first", "application/gzip") is True
    # The conditional write (If-None-Match: *) answers 412 for the taken key: nothing changes.
    assert store.put_new("p/1.gz", b"second", "text/plain") is False
    got = s3_in_process.get_object(Bucket="capture", Key="dev/p/1.gz")
    assert (got["Body"].read(), got["ContentType"]) == (b"first", "application/gzip")
    assert [o["Key"] for o in s3_in_process.list_objects_v2(Bucket="capture")["Contents"]] == [
        "dev/p/1.gz"
    ]


def test_s3_put_replaces_read_and_exists_answer_per_key(s3_in_process):
    s3_in_process.create_bucket(Bucket="store")
    store = open_store("s3://store/env")
    store.put("a/1.json", b"one", "application/json")
    store.put("a/1.json", b"two", "text/plain")
    got = s3_in_process.get_object(Bucket="store", Key="env/a/1.json")
    assert (got["Body"].read(), got["ContentType"]) == (b"two", "text/plain")
    assert store.read("a/1.json") == b"two"
    assert store.read("a/none") is None
    assert store.exists("a/1.json") is True
    assert store.exists("a/none") is False


def test_s3_upload_file_lands_below_the_prefix_with_its_sha256_checksum(s3_in_process, tmp_path):
    import base64
    import hashlib

    s3_in_process.create_bucket(Bucket="store")
    source = tmp_path / "model.onnx"
    source.write_bytes(b"model bytes")
    open_store("s3://store/env").upload_file("m/model.onnx", source)
    head = s3_in_process.head_object(Bucket="store", Key="env/m/model.onnx", ChecksumMode="ENABLED")
    expected = base64.b64encode(hashlib.sha256(b"model bytes").digest()).decode()
    assert head["ChecksumSHA256"] == expected
    body = s3_in_process.get_object(Bucket="store", Key="env/m/model.onnx")["Body"].read()
    assert body == b"model bytes"


def test_s3_list_gives_keys_below_the_prefix_and_never_a_sibling_prefix(s3_in_process):
    s3_in_process.create_bucket(Bucket="store")
    for key in ("env/a/1", "env/a/b/2", "env/c", "env2/x", "envy", "other/a/9"):
        s3_in_process.put_object(Bucket="store", Key=key, Body=b"")
    store = open_store("s3://store/env")
    assert sorted(store.list()) == ["a/1", "a/b/2", "c"]
    assert sorted(store.list("a")) == ["a/1", "a/b/2"]
    assert sorted(store.list("a/")) == ["a/1", "a/b/2"]
    assert store.list("nothing") == []
    bucket_wide = open_store("s3://store")
    assert sorted(bucket_wide.list()) == [
        "env/a/1",
        "env/a/b/2",
        "env/c",
        "env2/x",
        "envy",
        "other/a/9",
    ]
    assert bucket_wide.list("other") == ["other/a/9"]
    assert bucket_wide.list("env/a/b") == ["env/a/b/2"]


def test_s3_delete_removes_the_keys_and_a_missing_key_is_no_error(s3_in_process):
    s3_in_process.create_bucket(Bucket="store")
    for key in ("env/a", "env/b", "a"):
        s3_in_process.put_object(Bucket="store", Key=key, Body=b"")
    store = open_store("s3://store/env")
    store.delete(["a", "gone"])
    store.delete([])
    keys = [o["Key"] for o in s3_in_process.list_objects_v2(Bucket="store")["Contents"]]
    assert sorted(keys) == ["a", "env/b"]


def test_every_s3_call_on_a_missing_bucket_is_no_such_bucket_with_botocores_text(
    s3_in_process, tmp_path
):
    source = tmp_path / "f"
    source.write_bytes(b"x")
    store = open_store("s3://no-such-bucket/env")
    calls = {
        "PutObject": [
            lambda: store.put_new("k", b"", "text/plain"),
            lambda: store.put("k", b"", "text/plain"),
            # boto3's upload wraps the ClientError in S3UploadFailedError: the code is kept.
            lambda: store.upload_file("k", source),
        ],
        "GetObject": [lambda: store.read("k")],
        "HeadObject": [lambda: store.exists("k")],
        "ListObjectsV2": [lambda: store.list()],
        "DeleteObjects": [lambda: store.delete(["k"])],
    }
    for operation, of_operation in calls.items():
        for call in of_operation:
            with pytest.raises(NoSuchBucket) as raised:
                call()
            assert raised.value.code == "NoSuchBucket"
            assert f"(NoSuchBucket) when calling the {operation} operation" in str(raised.value)


def _stubbed_store(prefix: str = "env"):
    """An S3Store whose client answers only what the test queues (botocore's Stubber checks
    each request against the S3 service model and the expected parameters)."""
    import boto3
    from botocore.stub import Stubber

    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    stubber = Stubber(client)
    stubber.activate()
    return S3Store("bucket", prefix, client=client), stubber


def test_an_s3_refusal_other_than_missing_is_a_store_error_with_its_code():
    store, stubber = _stubbed_store()
    for method in ("get_object", "head_object", "put_object"):
        stubber.add_client_error(method, "AccessDenied", "Access Denied", 403)
    for call in (
        lambda: store.read("k"),
        lambda: store.exists("k"),
        lambda: store.put_new("k", b"", "text/plain"),
    ):
        with pytest.raises(StoreError) as raised:
            call()
        assert type(raised.value) is StoreError
        assert raised.value.code == "AccessDenied"
        assert "(AccessDenied)" in str(raised.value) and "Access Denied" in str(raised.value)
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize("code", ["404", "NoSuchKey", "NotFound"])
def test_every_s3_answer_for_no_such_key_reads_as_missing(code):
    store, stubber = _stubbed_store()
    stubber.add_client_error("get_object", code, "missing", 404)
    stubber.add_client_error("head_object", code, "missing", 404)
    assert store.read("k") is None
    assert store.exists("k") is False


def test_delete_sends_at_most_1000_keys_a_request_below_the_prefix():
    store, stubber = _stubbed_store()
    keys = [f"k{i}" for i in range(1001)]
    for batch in (keys[:1000], keys[1000:]):
        stubber.add_response(
            "delete_objects",
            {},
            {
                "Bucket": "bucket",
                "Delete": {"Objects": [{"Key": f"env/{k}"} for k in batch], "Quiet": True},
            },
        )
    store.delete(keys)
    stubber.assert_no_pending_responses()


def test_keys_s3_would_not_delete_are_a_store_error_naming_the_first():
    store, stubber = _stubbed_store()
    stubber.add_response(
        "delete_objects",
        {
            "Errors": [
                {"Key": "env/a", "Code": "AccessDenied", "Message": "Access Denied"},
                {"Key": "env/b", "Code": "InternalError", "Message": "try again"},
            ]
        },
    )
    with pytest.raises(StoreError) as raised:
        store.delete(["a", "b", "c"])
    assert str(raised.value) == ("deleting 2 of 3 objects failed, first env/a: Access Denied")
    assert raised.value.code == "AccessDenied"


def test_an_unreachable_s3_is_store_unreachable():
    import boto3
    from botocore.config import Config

    from tests.conftest import free_port

    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="us-east-1",
        aws_access_key_id="t",
        aws_secret_access_key="t",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2),
    )
    store = S3Store("bucket", "env", client=client)
    with pytest.raises(StoreUnreachable) as raised:
        store.read("k")
    assert raised.value.code == ""
    assert "Could not connect to the endpoint URL" in str(raised.value)


def test_a_failure_without_an_s3_code_is_named_by_its_class():
    from boto3.exceptions import S3UploadFailedError

    error = store_error(S3UploadFailedError("Failed to upload"))
    assert type(error) is StoreError
    assert (str(error), error.code) == ("Failed to upload", "S3UploadFailedError")
    assert error_code(ValueError("x")) == ""


def test_a_local_delete_removes_files_and_a_missing_one_is_no_error(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put("a/1", b"1")
    store.put("a/2", b"2")
    store.delete(["a/1", "a/none"])
    assert store.list() == ["a/2"]
    assert store.url == str(tmp_path)


def test_an_s3_error_without_a_code_is_named_by_its_class():
    from botocore.exceptions import ClientError

    for response in ({"Error": {"Message": "no code"}}, {}):
        error = ClientError(response, "GetObject")
        assert error_code(error) == ""
        assert store_error(error).code == "ClientError"


def test_keys_s3_would_not_delete_without_a_code_give_an_empty_code():
    store, stubber = _stubbed_store()
    stubber.add_response("delete_objects", {"Errors": [{"Key": "env/a", "Message": "no"}]})
    with pytest.raises(StoreError) as raised:
        store.delete(["a"])
    assert raised.value.code == ""
    assert str(raised.value) == "deleting 1 of 1 objects failed, first env/a: no"


def test_a_local_put_makes_every_missing_directory(tmp_path: Path):
    store = LocalStore(tmp_path / "new" / "root")
    store.put("a/b/c.json", b"{}")
    assert (tmp_path / "new" / "root" / "a" / "b" / "c.json").read_bytes() == b"{}"


def test_s3_list_of_a_prefix_ending_in_any_letter_keeps_it(s3_in_process):
    s3_in_process.create_bucket(Bucket="store")
    for key in ("boX/1", "bo/2", "X/3"):
        s3_in_process.put_object(Bucket="store", Key=key, Body=b"")
    store = open_store("s3://store")
    assert store.list("boX") == ["boX/1"]
    assert store.list("X") == ["X/3"]


def test_an_s3_prefix_keeps_every_letter_and_loses_only_its_slashes():
    store = open_store("s3://bucket/Xenv/X/", s3_client=lambda: None)
    assert (store.bucket, store.prefix, store.url) == ("bucket", "Xenv/X", "s3://bucket/Xenv/X")


# -- Streams, digests and listings with sizes and times -----------------------------------


def _chunks(total: int, size: int = 1024 * 1024) -> list[bytes]:
    """`total` bytes that no two chunks share, in chunks of `size`."""
    import hashlib

    return [
        (hashlib.sha256(str(n).encode()).digest() * (size // 32 + 1))[: min(size, total - start)]
        for n, start in enumerate(range(0, total, size))
    ]


def test_s3_put_new_stream_uploads_parts_of_at_least_8_mib_and_never_replaces(s3_in_process):
    import hashlib

    from service import store as stores

    s3_in_process.create_bucket(Bucket="capture")
    store = open_store("s3://capture/dev")
    chunks = _chunks(2 * stores.STREAM_PART_BYTES + 123)
    whole = b"".join(chunks)
    assert store.put_new_stream("h/merged.gz", lambda: chunks, "application/gzip") is True
    head = s3_in_process.head_object(Bucket="capture", Key="dev/h/merged.gz", PartNumber=1)
    assert head["PartsCount"] == 3 and head["ContentLength"] == stores.STREAM_PART_BYTES
    got = s3_in_process.get_object(Bucket="capture", Key="dev/h/merged.gz")
    assert (got["Body"].read(), got["ContentType"]) == (whole, "application/gzip")
    assert store.sha256("h/merged.gz") == hashlib.sha256(whole).digest()
    assert store.sha256("h/missing.gz") is None
    # Taken: 412 at the completion; the object stays, and no upload is left open.
    assert store.put_new_stream("h/merged.gz", lambda: [b"other"], "text/plain") is False
    assert store.read("h/merged.gz") == whole
    assert s3_in_process.list_multipart_uploads(Bucket="capture").get("Uploads", []) == []
    # No bytes at all is one empty part: an empty object.
    assert store.put_new_stream("h/empty.gz", lambda: iter(()), "application/gzip") is True
    assert store.read("h/empty.gz") == b""


def test_a_stream_that_fails_midway_aborts_its_upload_and_writes_nothing(s3_in_process):
    s3_in_process.create_bucket(Bucket="capture")
    store = open_store("s3://capture/dev")

    def failing():
        yield from _chunks(9 * 1024 * 1024)
        raise OSError("a part could not be read")

    with pytest.raises(OSError, match="could not be read"):
        store.put_new_stream("h/merged.gz", failing, "application/gzip")
    assert store.read("h/merged.gz") is None
    assert s3_in_process.list_multipart_uploads(Bucket="capture").get("Uploads", []) == []


def test_a_local_stream_that_fails_midway_leaves_no_file(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))

    def failing():
        yield b"first"
        raise OSError("a part could not be read")

    with pytest.raises(OSError, match="could not be read"):
        store.put_new_stream("h/m.gz", failing)
    assert list((tmp_path / "h").iterdir()) == []


def test_a_local_stream_and_digest_answer_as_s3s(tmp_path: Path) -> None:
    import hashlib

    store = open_store(str(tmp_path))
    chunks = _chunks(3 * 1024 * 1024 + 5)
    assert store.put_new_stream("h/m.gz", lambda: chunks) is True
    assert store.put_new_stream("h/m.gz", lambda: [b"x"]) is False
    assert store.sha256("h/m.gz") == hashlib.sha256(b"".join(chunks)).digest()
    assert store.sha256("h/none") is None
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["m.gz"]


def test_entries_give_each_objects_size_and_time_on_s3_and_on_disk(s3_in_process, tmp_path):
    from datetime import UTC, datetime, timedelta

    s3_in_process.create_bucket(Bucket="capture")
    for store in (open_store("s3://capture/dev"), open_store(str(tmp_path))):
        store.put_new("a/1.gz", b"12345", "application/gzip")
        store.put_new("a/b/2.gz", b"", "application/gzip")
        entries = sorted(store.entries("a"), key=lambda entry: entry.key)
        assert [(e.key, e.size) for e in entries] == [("a/1.gz", 5), ("a/b/2.gz", 0)]
        now = datetime.now(UTC)
        assert all(now - timedelta(minutes=1) < e.modified <= now for e in entries)
        assert all(e.modified.tzinfo is not None for e in entries)
        assert sorted(store.list("a")) == ["a/1.gz", "a/b/2.gz"]


@pytest.mark.parametrize("operation", ["put_object", "complete_multipart_upload"])
def test_a_conditional_write_meeting_a_concurrent_one_is_tried_again(operation):
    """409 ConditionalRequestConflict: S3 asks for the write again (PutObject and
    CompleteMultipartUpload, If-None-Match); botocore does not retry a 409."""
    store, stubber = _stubbed_store()
    attempts = 2
    for attempt in range(attempts):
        if operation == "complete_multipart_upload":
            stubber.add_response("create_multipart_upload", {"UploadId": f"u{attempt}"})
            stubber.add_response("upload_part", {"ETag": '"e"', "ChecksumSHA256": "c2hh"})
        last = attempt == attempts - 1
        if last:
            stubber.add_response(operation, {})
        else:
            stubber.add_client_error(operation, "ConditionalRequestConflict", "conflict", 409)
            if operation == "complete_multipart_upload":
                stubber.add_response("abort_multipart_upload", {})
    if operation == "put_object":
        assert store.put_new("k", b"body", "text/plain") is True
    else:
        assert store.put_new_stream("k", lambda: [b"body"], "text/plain") is True
    stubber.assert_no_pending_responses()


def test_a_conflict_that_persists_is_a_store_error_naming_it():
    from service import store as stores

    store, stubber = _stubbed_store()
    for _ in range(stores.CONFLICT_ATTEMPTS):
        stubber.add_client_error("put_object", "ConditionalRequestConflict", "conflict", 409)
    with pytest.raises(StoreError) as raised:
        store.put_new("k", b"body", "text/plain")
    assert raised.value.code == "ConditionalRequestConflict"
    stubber.assert_no_pending_responses()
