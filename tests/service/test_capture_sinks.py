"""Where capture parts go, in this process: the S3 sink (moto's mock_aws), the local sink,
the sink URL's errors, and the local spool's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.capture.partformat import CONTENT_TYPE
from service.capture.records import Part
from service.capture.sinks import (
    S3_CONNECT_TIMEOUT_SECONDS,
    S3_READ_TIMEOUT_SECONDS,
    LocalSink,
    SinkError,
    StoreSink,
    open_sink,
)
from service.capture.spool import Spool
from service.store import LocalStore, S3Store


def test_the_s3_sink_writes_each_part_once_as_gzip_below_its_prefix(s3_in_process):
    s3_in_process.create_bucket(Bucket="capture")
    sink = open_sink("s3://capture/dev")
    assert isinstance(sink, StoreSink) and isinstance(sink.store, S3Store)
    assert sink.url == "s3://capture/dev"
    assert sink.put("dev/2026/x.jsonl.gz", b"first") is True
    assert sink.put("dev/2026/x.jsonl.gz", b"second") is False
    got = s3_in_process.get_object(Bucket="capture", Key="dev/dev/2026/x.jsonl.gz")
    assert (got["Body"].read(), got["ContentType"]) == (b"first", CONTENT_TYPE)
    assert CONTENT_TYPE == "application/gzip"


def test_the_s3_sinks_client_gives_up_quickly_so_the_spool_takes_over(s3_in_process):
    config = open_sink("s3://capture/dev").store.client.meta.config
    assert config.connect_timeout == S3_CONNECT_TIMEOUT_SECONDS
    assert config.read_timeout == S3_READ_TIMEOUT_SECONDS
    # One botocore retry, then the recorder's own backoff (and the spool) take over.
    assert config.retries == {"mode": "standard", "total_max_attempts": 2}
    assert config.max_pool_connections == 2


def test_the_local_sink_is_a_directory_store(tmp_path: Path):
    sink = LocalSink(tmp_path)
    assert isinstance(sink.store, LocalStore) and sink.store.root == tmp_path
    assert sink.url == str(tmp_path)
    assert sink.put("dev/a.jsonl.gz", b"part") is True
    assert sink.put("dev/a.jsonl.gz", b"other") is False
    assert (tmp_path / "dev" / "a.jsonl.gz").read_bytes() == b"part"
    url_sink = open_sink(str(tmp_path / "capture"))
    assert url_sink.url == str(tmp_path / "capture")


def test_a_sink_url_that_names_no_store_says_what_to_write():
    with pytest.raises(SinkError) as raised:
        open_sink("ftp://host/capture")
    assert str(raised.value) == (
        "PREDICTION_LOG_URL='ftp://host/capture': use a local directory, a file:// URL or "
        "s3://bucket/prefix"
    )
    with pytest.raises(SinkError) as raised:
        open_sink("s3:///capture")
    assert str(raised.value) == (
        "PREDICTION_LOG_URL: 's3:///capture' needs a bucket: s3://bucket/prefix"
    )
    with pytest.raises(SinkError) as raised:
        open_sink("s3://Capture Bucket/dev")
    assert str(raised.value) == (
        "PREDICTION_LOG_URL: 's3://Capture Bucket/dev': 'Capture Bucket' is not an S3 bucket "
        "name (3 to 63 lowercase letters, digits, dots and hyphens, beginning and ending with "
        "a letter or digit)"
    )


def test_the_spool_saves_a_part_under_its_key_and_never_replaces_one(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    key = "dev/2026/11/30/14/20261130T140000.000Z-host-1-abcd0123-000001.jsonl.gz"
    path = spool.save(Part(key, b"first", 1))
    assert path == tmp_path / "spool" / key
    assert path.read_bytes() == b"first"
    assert spool.key(path) == key
    assert spool.save(Part(key, b"second", 1)) == path
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_the_spool_scan_finds_parts_oldest_name_first_and_nothing_else(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    assert spool.scan() == []  # no spool directory yet
    # Part names start with their UTC time: the order is by name, not by directory.
    older = "dev/2026/11/30/15/20261130T140000.000Z-b-1-00000000-000001.jsonl.gz"
    newer = "dev/2026/11/30/14/20261130T150000.000Z-a-1-00000000-000001.jsonl.gz"
    for key in (newer, older):
        spool.save(Part(key, b"part", 1))
    (tmp_path / "spool" / "dev" / "notes.txt").write_text("not a part")
    (tmp_path / "spool" / "dev" / "x.jsonl").write_text("not a part either")
    assert [spool.key(path) for path in spool.scan()] == [older, newer]
