"""Captured predictions, read back: where the parts are, and the records in them.

The service writes each environment's records (see `service.capture.records`)
under `<PREDICTION_LOG_URL>/<env>/YYYY/MM/DD/HH/<part>.jsonl.gz`, on S3 or on
local disk (`service.store`). `read_records` yields them newest first; `logs`
prints them one JSON object per line (one environment's prediction log).
"""

from __future__ import annotations

import gzip
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO

import orjson

from service.store import (
    LocalStore,
    NoSuchBucket,
    NotAStore,
    S3Store,
    StoreError,
    StoreUnreachable,
)
from service.store import open_store as store_at

URL_ENV = "PREDICTION_LOG_URL"
PART_SUFFIX = ".jsonl.gz"
_HOUR_KEY = re.compile(r"(?:^|/)(\d{4})/(\d{2})/(\d{2})/(\d{2})/[^/]+\.jsonl\.gz$")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class PredictionLogError(Exception):
    """The prediction log cannot be read; the message says what to fix."""


# -- where the parts are: a local directory or S3 (service.store) --------------

PartStore = LocalStore | S3Store


def open_store(url: str) -> PartStore:
    """The store of parts `url` names; PredictionLogError for a URL that names none."""
    try:
        return store_at(url)
    except NotAStore:
        raise PredictionLogError(
            f"{url!r} is not a local directory, file:// URL or s3://bucket/prefix"
        ) from None
    except ValueError as exc:
        raise PredictionLogError(str(exc)) from None


def part_keys(store: PartStore, prefix: str) -> list[str]:
    """Part keys under `prefix`, relative to the store's root."""
    if isinstance(store, LocalStore) and not store.root.is_dir():
        raise PredictionLogError(
            f"{store.root} does not exist: no predictions were captured there; pass --url "
            f"or set {URL_ENV} to where the service writes them"
        )
    try:
        keys = store.list(prefix)
    except NoSuchBucket:
        raise PredictionLogError(
            f"bucket {store.bucket!r} does not exist; check --url / {URL_ENV}"
        ) from None
    except StoreUnreachable as exc:
        raise PredictionLogError(
            f"listing {store.url}/{prefix}: {exc} (are AWS credentials and region set?)"
        ) from None
    except StoreError as exc:
        raise PredictionLogError(f"listing {store.url}/{prefix}: {exc}") from None
    return [key for key in keys if key.endswith(PART_SUFFIX)]


def read_part(store: PartStore, key: str) -> bytes:
    body = store.read(key)
    if body is None:
        raise PredictionLogError(f"{store.url}/{key} was listed but is gone; run the command again")
    return body


# -- reading records ------------------------------------------------------------


@dataclass(frozen=True, order=True)
class PartRef:
    hour: datetime
    key: str


def list_parts(store: PartStore, env: str, since: datetime | None = None) -> list[PartRef]:
    """The environment's parts, newest hour first, skipping hours wholly before `since`."""
    parts = []
    for key in part_keys(store, env):
        match = _HOUR_KEY.search(key)
        if not match:
            continue
        hour = datetime(*(int(group) for group in match.groups()), tzinfo=UTC)
        if since is None or hour + timedelta(hours=1) > since:
            parts.append(PartRef(hour, key))
    return sorted(parts, reverse=True)


def decode_part(body: bytes, source: str) -> list[dict]:
    try:
        return [orjson.loads(line) for line in gzip.decompress(body).splitlines() if line.strip()]
    except (OSError, EOFError, orjson.JSONDecodeError) as exc:
        raise PredictionLogError(f"{source} is not a gzip JSON Lines part: {exc}") from None


def read_records(store: PartStore, env: str, since: datetime | None = None) -> Iterator[dict]:
    """Every record of `env` answered at or after `since`, newest first, hour by hour."""
    parts = list_parts(store, env, since)
    cutoff = _iso(since) if since else None
    for hour in sorted({part.hour for part in parts}, reverse=True):
        records = [
            record
            for part in parts
            if part.hour == hour
            for record in decode_part(read_part(store, part.key), f"{store.url}/{part.key}")
            if cutoff is None or record.get("time", "") >= cutoff
        ]
        records.sort(
            key=lambda record: (record.get("time", ""), record.get("id", "")), reverse=True
        )
        yield from records


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`2h`, `30m`, `1d`, `45s` (ago), or an ISO 8601 date/time (UTC unless it says)."""
    now = now or datetime.now(UTC)
    relative = _RELATIVE.match(text.strip().lower())
    if relative:
        amount, unit = relative.groups()
        return now - timedelta(**{_UNITS[unit]: float(amount)})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise PredictionLogError(
            f"--since {text!r} is neither a duration (30m, 2h, 1d) nor an ISO date/time "
            "(2025-01-31 or 2025-01-31T12:00)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def logs(
    store: PartStore,
    env: str,
    *,
    since: datetime | None = None,
    limit: int | None = None,
    inputs: bool = False,
    out: IO[str] | None = None,
) -> int:
    """Print the records one JSON object per line, newest first; return how many."""
    out = out or sys.stdout
    printed = 0
    for record in read_records(store, env, since):
        if limit is not None and printed >= limit:
            break
        if not inputs:
            record.pop("inputs", None)
            record.pop("input_shape", None)
        out.write(orjson.dumps(record).decode() + "\n")
        printed += 1
    return printed


def _iso(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
