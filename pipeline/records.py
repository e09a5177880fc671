"""Deployment records: what is deployed in each environment, for the gate and for people.

An environment's records live under one URL, e.g. `s3://<bucket>/deployments/dev`
(or a local directory / `file://` URL, for tests and trying things out):

    <deployments_url>/<release_id>.json   one per deployment attempt, never rewritten
    <deployments_url>/latest.json         the deployment now serving: rewritten only
                                          when a deployment succeeds

A record is one JSON object. Required keys:

    release_id     str, a file-name-safe id, e.g. "20250101T120000Z-1a2b3c4"
    model_sha256   str, the sha256 of the deployed model's bytes
    outcome        "succeeded" | "failed" | "rolled_back"
    gate           {"accuracy": float, ...}: the gate's figures for that model
                   (`pipeline.gate.GateResult.record()` gives the whole object:
                   accuracy, p99_latency_ms, test data sha256s, passed)

Optional keys the deploy step fills in when it has them: environment, model_url,
model_name, image, git_sha, started_at, finished_at (ISO 8601 UTC), reason.
The gate reads `latest.json` as the champion: the challenger must not fall more
than `[gate] max_regression` below `gate.accuracy`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from service.artifacts import local_path, s3_location

LATEST = "latest.json"
OUTCOMES = ("succeeded", "failed", "rolled_back")
REQUIRED_KEYS = ("release_id", "model_sha256", "outcome", "gate")
_RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RecordError(Exception):
    """A deployment record is malformed or its store cannot be reached."""


def environment_url(base_url: str, environment: str) -> str:
    """`s3://bucket/deployments` + `dev` -> `s3://bucket/deployments/dev`."""
    return f"{base_url.rstrip('/')}/{environment}"


def validate(record: dict[str, Any], source: str = "record") -> dict[str, Any]:
    """Return `record` when it keeps the contract above, else raise RecordError naming the key."""
    if not isinstance(record, dict):
        raise RecordError(f"{source}: a deployment record must be a JSON object")
    for key in REQUIRED_KEYS:
        if key not in record:
            raise RecordError(f"{source}: required key {key!r} is missing")
    if not isinstance(record["release_id"], str) or not _RELEASE_ID.match(record["release_id"]):
        raise RecordError(
            f"{source}: release_id {record['release_id']!r} must be 1-128 letters, digits, "
            "'.', '_' or '-' (it names the record's file)"
        )
    if record["outcome"] not in OUTCOMES:
        raise RecordError(
            f"{source}: outcome {record['outcome']!r} is not one of {', '.join(OUTCOMES)}"
        )
    gate = record["gate"]
    accuracy = gate.get("accuracy") if isinstance(gate, dict) else None
    if (
        isinstance(accuracy, bool)
        or not isinstance(accuracy, int | float)
        or not 0 <= accuracy <= 1
    ):
        raise RecordError(f"{source}: gate.accuracy must be a number from 0 to 1")
    return record


def read_latest(deployments_url: str) -> dict[str, Any] | None:
    """The environment's `latest.json`, or None when nothing was ever deployed there."""
    source = _join(deployments_url, LATEST)
    raw = _read(source)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError as exc:
        raise RecordError(f"{source}: not valid JSON: {exc}") from None
    return validate(record, source)


def list_records(deployments_url: str) -> list[dict[str, Any]]:
    """Every release record of the environment, oldest first (release ids sort by time)."""
    names = sorted(
        name for name in _list(deployments_url) if name.endswith(".json") and name != LATEST
    )
    found = []
    for name in names:
        source = _join(deployments_url, name)
        raw = _read(source)
        if raw is None:
            continue
        try:
            found.append(validate(json.loads(raw), source))
        except ValueError as exc:
            raise RecordError(f"{source}: not valid JSON: {exc}") from None
    return found


def write(deployments_url: str, record: dict[str, Any]) -> list[str]:
    """Write `<release_id>.json`, and `latest.json` when the deployment succeeded.

    Returns the URLs written.
    """
    validate(record)
    body = json.dumps(record, indent=2, sort_keys=True).encode() + b"\n"
    targets = [_join(deployments_url, f"{record['release_id']}.json")]
    if record["outcome"] == "succeeded":
        targets.append(_join(deployments_url, LATEST))
    for target in targets:
        _write(target, body)
    return targets


# -- storage: S3 through boto3, or the filesystem -------------------------------


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _s3_location(url: str) -> tuple[str, str] | None:
    try:
        return s3_location(url)
    except ValueError as exc:
        raise RecordError(str(exc)) from None


def _filesystem_path(url: str) -> Path:
    path = local_path(url)
    if path is None:
        raise RecordError(
            f"{url}: deployment records live in S3 (s3://bucket/prefix) or a local directory"
        )
    return path


def _read(url: str) -> bytes | None:
    location = _s3_location(url)
    if location is None:
        path = _filesystem_path(url)
        return path.read_bytes() if path.is_file() else None
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = location
    try:
        return _s3().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404"):
            return None
        if code == "NoSuchBucket":
            raise RecordError(f"{url}: bucket {bucket!r} does not exist") from exc
        raise RecordError(f"{url}: S3 refused the read ({code}): {exc}") from exc
    except BotoCoreError as exc:
        raise RecordError(f"{url}: could not reach S3: {exc}") from exc


def _list(url: str) -> list[str]:
    """File names directly under `url`."""
    location = _s3_location(url)
    if location is None:
        path = _filesystem_path(url)
        return [p.name for p in path.iterdir() if p.is_file()] if path.is_dir() else []
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = location
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    names = []
    try:
        pages = _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            names += [item["Key"][len(prefix) :] for item in page.get("Contents", [])]
    except ClientError as exc:
        raise RecordError(f"{url}: could not list records: {exc}") from exc
    except BotoCoreError as exc:
        raise RecordError(f"{url}: could not reach S3: {exc}") from exc
    return [name for name in names if "/" not in name]


def _write(url: str, body: bytes) -> None:
    location = _s3_location(url)
    if location is None:
        path = _filesystem_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(body)
        tmp.replace(path)
        return
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = location
    try:
        _s3().put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
            raise RecordError(f"{url}: bucket {bucket!r} does not exist") from exc
        raise RecordError(f"{url}: could not write the record: {exc}") from exc
    except BotoCoreError as exc:
        raise RecordError(f"{url}: could not reach S3: {exc}") from exc


def _s3():  # boto3 clients are untyped
    import boto3

    return boto3.client("s3")
