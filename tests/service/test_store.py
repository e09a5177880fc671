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
    open_store,
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
