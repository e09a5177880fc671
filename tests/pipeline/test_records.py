"""Deployment records: the contract between the deploy step and the gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipeline import records
from pipeline.records import RecordError, environment_url, read_latest, validate, write


def record(release_id: str = "20250101T120000Z-1a2b3c4", **changes: Any) -> dict[str, Any]:
    return {
        "release_id": release_id,
        "environment": "dev",
        "model_sha256": "ab" * 32,
        "outcome": "succeeded",
        "gate": {"accuracy": 0.9891, "p99_latency_ms": 0.1},
        **changes,
    }


def test_environment_url_appends_the_environment() -> None:
    assert environment_url("s3://bucket/deployments/", "dev") == "s3://bucket/deployments/dev"


def test_local_directory_round_trip(tmp_path: Path) -> None:
    url = str(tmp_path / "deployments" / "dev")
    assert read_latest(url) is None
    first = record("r1")
    written = write(url, first)
    assert written == [f"{url}/r1.json", f"{url}/latest.json"]
    assert read_latest(url) == first
    assert json.loads((tmp_path / "deployments" / "dev" / "r1.json").read_text()) == first


def test_failed_deployment_keeps_the_champion(tmp_path: Path) -> None:
    url = (tmp_path / "dev").as_uri()  # file:// works too
    write(url, record("r1"))
    written = write(url, record("r2", outcome="failed", model_sha256="cd" * 32))
    assert written == [f"{url}/r2.json"]
    assert read_latest(url)["release_id"] == "r1"
    assert (tmp_path / "dev" / "r2.json").is_file()


def test_malformed_latest_is_named(tmp_path: Path) -> None:
    (tmp_path / "latest.json").write_text("{not json")
    with pytest.raises(RecordError, match=r"latest\.json: not valid JSON"):
        read_latest(str(tmp_path))
    (tmp_path / "latest.json").write_text(json.dumps({"release_id": "r1"}))
    with pytest.raises(RecordError, match="required key 'model_sha256' is missing"):
        read_latest(str(tmp_path))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"release_id": "../escape"}, "release_id '../escape' must be"),
        ({"outcome": "done"}, "outcome 'done' is not one of succeeded, failed, rolled_back"),
        ({"gate": {"accuracy": 98.9}}, "gate.accuracy must be a number from 0 to 1"),
        ({"gate": {}}, "gate.accuracy must be a number from 0 to 1"),
        ({"gate": "passed"}, "gate.accuracy must be a number from 0 to 1"),
    ],
)
def test_write_refuses_a_broken_record(tmp_path: Path, bad: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordError, match=message):
        write(str(tmp_path), record(**bad))
    assert not any(tmp_path.iterdir())


def test_validate_names_a_missing_key() -> None:
    broken = record()
    del broken["gate"]
    with pytest.raises(RecordError, match="required key 'gate' is missing"):
        validate(broken)


def test_https_is_not_a_record_store() -> None:
    with pytest.raises(RecordError, match=r"S3 .* or a local directory"):
        read_latest("https://example.com/deployments/dev")


@pytest.mark.integration
def test_s3_round_trip(aws: Any) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="releases")
    url = "s3://releases/deployments/prod"
    assert read_latest(url) is None
    write(url, record("r1"))
    write(url, record("r2", outcome="rolled_back"))
    assert read_latest(url)["release_id"] == "r1"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="releases")["Contents"])
    assert keys == [
        "deployments/prod/latest.json",
        "deployments/prod/r1.json",
        "deployments/prod/r2.json",
    ]
    head = s3.head_object(Bucket="releases", Key="deployments/prod/latest.json")
    assert head["ContentType"] == "application/json"


@pytest.mark.integration
def test_s3_missing_bucket_is_named(aws: Any) -> None:
    with pytest.raises(RecordError, match="bucket 'nowhere' does not exist"):
        read_latest("s3://nowhere/deployments/dev")
    with pytest.raises(RecordError, match="bucket 'nowhere' does not exist"):
        records.write("s3://nowhere/deployments/dev", record())
