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
model_name, image, git_sha, started_at, finished_at (ISO 8601 UTC), reason, and
alarms_in_alarm_at_start (the deployment alarms in ALARM as the deployment started, which
ECS then did not watch: pipeline.alarms).
The gate reads `latest.json` as the champion: the challenger must not fall more
than `[gate] max_regression` below `gate.accuracy`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from typing import Any

from service.store import (
    LocalStore,
    NoSuchBucket,
    NotAStore,
    S3Store,
    StoreError,
    StoreUnreachable,
    open_store,
)

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
    raw = _read(deployments_url, LATEST)
    if raw is None:
        return None
    return _decode(raw, _join(deployments_url, LATEST))


def list_records(deployments_url: str) -> list[dict[str, Any]]:
    """Every release record of the environment, oldest first (release ids sort by time)."""
    names = sorted(
        name for name in _list(deployments_url) if name.endswith(".json") and name != LATEST
    )
    found = []
    for name in names:
        raw = _read(deployments_url, name)
        if raw is not None:
            found.append(_decode(raw, _join(deployments_url, name)))
    return found


def write(
    deployments_url: str,
    record: dict[str, Any],
    *,
    s3_client: Callable[[str], Any] | None = None,
) -> list[str]:
    """Write `<release_id>.json`, and `latest.json` when the deployment succeeded.

    `s3_client(name)` makes the S3 client that writes the file `name` (by default,
    `service.store.open_store`'s). Returns the URLs written.
    """
    validate(record)
    body = json.dumps(record, indent=2, sort_keys=True).encode() + b"\n"
    names = [f"{record['release_id']}.json"]
    if record["outcome"] == "succeeded":
        names.append(LATEST)
    for name in names:
        _write(deployments_url, name, body, None if s3_client is None else partial(s3_client, name))
    return [_join(deployments_url, name) for name in names]


def _decode(raw: bytes, source: str) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except ValueError as exc:
        raise RecordError(f"{source}: not valid JSON: {exc}") from None
    return validate(record, source)


# -- the store: S3 or a local directory (service.store) ----------------------------


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _store(url: str, s3_client: Callable[[], Any] | None = None) -> LocalStore | S3Store:
    try:
        return open_store(url, s3_client=s3_client)
    except NotAStore:
        raise RecordError(
            f"{url}: deployment records live in S3 (s3://bucket/prefix) or a local directory"
        ) from None
    except ValueError as exc:
        raise RecordError(str(exc)) from None


def _read(url: str, name: str) -> bytes | None:
    store, source = _store(url), _join(url, name)
    try:
        return store.read(name)
    except StoreError as exc:
        raise _failure(exc, source, f"S3 refused the read ({exc.code})", store) from exc


def _list(url: str) -> list[str]:
    """File names directly under `url`."""
    try:
        names = _store(url).list()
    except StoreError as exc:
        raise _failure(exc, url, "could not list records") from exc
    return [name for name in names if "/" not in name]


def _write(url: str, name: str, body: bytes, s3_client: Callable[[], Any] | None = None) -> None:
    store, target = _store(url, s3_client), _join(url, name)
    try:
        store.put(name, body, "application/json")
    except StoreError as exc:
        raise _failure(exc, target, "could not write the record", store) from exc


def _failure(
    exc: StoreError, where: str, failed: str, store: LocalStore | S3Store | None = None
) -> RecordError:
    """One line for a failed request at `where`: S3 out of reach, the store's bucket
    missing (when `store` is given), else `failed` and S3's answer."""
    if isinstance(exc, StoreUnreachable):
        return RecordError(f"{where}: could not reach S3: {exc}")
    if isinstance(exc, NoSuchBucket) and isinstance(store, S3Store):
        return RecordError(f"{where}: bucket {store.bucket!r} does not exist")
    return RecordError(f"{where}: {failed}: {exc}")
