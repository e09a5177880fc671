"""Captured predictions, read back: where the parts are, and the records in them.

The service writes each environment's records (see `service.capture.records`)
under `<PREDICTION_LOG_URL>/<env>/YYYY/MM/DD/HH/<part>.jsonl.gz`, on S3 or on
local disk (`service.store`). `read_records` yields them newest first; `logs`
prints them one JSON object per line (one environment's prediction log).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any, TypeVar

import orjson

from service import aws
from service.capture import partformat
from service.store import (
    Entry,
    LocalStore,
    NoSuchBucket,
    NotAStore,
    S3Store,
    StoreError,
    StoreUnreachable,
)
from service.store import open_store as store_at

URL_ENV = "PREDICTION_LOG_URL"
# `--since` lists one prefix per day, up to this many days; a longer span is one listing
# of the whole environment (fewer calls than a prefix a day by then).
MAX_LISTED_DAYS = 400
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class PredictionLogError(Exception):
    """The prediction log cannot be read; the message says what to fix."""


class PartGoneError(PredictionLogError):
    """An object a listing named was gone when read: a compaction merged its hour and
    deleted the parts meanwhile (`compact`, step 5)."""


# -- where the parts are: a local directory or S3 (service.store) --------------

PartStore = LocalStore | S3Store


def open_store(url: str) -> PartStore:
    """The store of parts `url` names; PredictionLogError for a URL that names none."""
    if not url.strip():
        raise PredictionLogError(
            f"an empty URL names no store of parts: pass --url (a directory or "
            f"s3://bucket/prefix) or set {URL_ENV}"
        )
    try:
        return store_at(url, s3_client=_s3_client)
    except NotAStore:
        raise PredictionLogError(
            f"{url!r} is not a local directory, file:// URL or s3://bucket/prefix"
        ) from None
    except ValueError as exc:
        raise PredictionLogError(str(exc)) from None


def part_keys(store: PartStore, prefix: str, *, check_only: bool = False) -> list[str]:
    """Part keys under `prefix`, relative to the store's root (merged objects and
    manifests included); with `check_only`, only the local directory's check."""
    return [entry.key for entry in part_entries(store, prefix, check_only=check_only)]


def part_entries(store: PartStore, prefix: str, *, check_only: bool = False) -> list[Entry]:
    """`part_keys` with each object's size and last-modified time."""
    if isinstance(store, LocalStore) and not store.root.is_dir():
        what = "is a file, not a directory of parts" if store.root.exists() else "does not exist"
        raise PredictionLogError(
            f"{store.root} {what}: no predictions were captured there; pass --url "
            f"or set {URL_ENV} to where the service writes them"
        )
    if check_only:
        return []
    try:
        entries = store.entries(prefix)
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
    return [entry for entry in entries if partformat.split_key(entry.key)]


def read_part(store: PartStore, key: str) -> bytes:
    """The object's bytes; PartGoneError when it is not there."""
    body = store.read(key)
    if body is None:
        raise PartGoneError(
            f"{store.url}/{key} was listed but is gone "
            "(a compaction merged it meanwhile); run the command again"
        )
    return body


Result = TypeVar("Result")


def hour_results(
    store: PartStore,
    hour: Hour,
    keys: list[str],
    started: list[Future[Result]],
    work: Callable[[str], Result],
) -> tuple[list[str], list[Result]]:
    """`work(key)` for each of the hour's `keys`, already `started` on a pool, and the
    keys they are of. A compaction that commits the hour between its listing and the
    reads deletes the parts it merged: when one was gone (PartGoneError), the hour is
    listed again and `work` runs on its keys now (its merged objects), once. Raises
    PartGoneError when an object is gone again."""
    try:
        return keys, [future.result() for future in started]
    except PartGoneError:
        for future in started:
            future.cancel()
        keys = data_keys(store, relisted(store, hour))
        return keys, [work(key) for key in keys]


def relisted(store: PartStore, hour: Hour) -> Hour:
    """`hour` as the store holds it now."""
    keys = part_keys(store, hour.prefix + "/")
    return group_hours(keys).get(hour.hour, Hour(hour.hour, hour.prefix))


# -- reading records ------------------------------------------------------------

# Parallel GETs: S3 answers each in tens of milliseconds, so reading is latency-bound and
# threads overlap the waits (botocore releases the GIL while it waits). Measured on a moto
# server on loopback, 3,600 parts: see the README's capture-read benchmark rows.
READ_WORKERS = 16


@dataclass
class Hour:
    """What one UTC hour directory holds: parts, merged objects and their manifests
    (names, see `service.capture.partformat`)."""

    hour: datetime
    prefix: str  # `<env>/YYYY/MM/DD/HH`, relative to the store's root
    parts: list[str] = field(default_factory=list)
    compacted: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"


def group_hours(keys: list[str]) -> dict[datetime, Hour]:
    """Keys of one environment -> its hours; keys outside the hour layout are ignored."""
    hours: dict[datetime, Hour] = {}
    for key in keys:
        split = partformat.split_key(key)
        if split is None:
            continue
        hour, name = split
        entry = hours.setdefault(hour, Hour(hour, key[: -len(name) - 1]))
        if partformat.is_manifest(name):
            entry.manifests.append(name)
        elif partformat.is_compacted(name):
            entry.compacted.append(name)
        elif partformat.is_data(name):
            entry.parts.append(name)
    return hours


def list_hours(
    store: PartStore, env: str, since: datetime | None = None, now: datetime | None = None
) -> list[Hour]:
    """The environment's hours, newest first, skipping hours wholly before `since`.

    Without `since`, or when `since` is more than MAX_LISTED_DAYS days back, the whole
    environment is listed; otherwise one listing per UTC day from `since` to `now`, in
    parallel.
    """
    now = now or datetime.now(UTC)
    first_day = None
    if since is not None:
        first_day = since.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if now - first_day >= timedelta(days=MAX_LISTED_DAYS):
            first_day = None
    if first_day is None:
        keys = part_keys(store, env)
    else:
        prefixes = []
        day = first_day
        while day <= now:
            prefixes.append(partformat.hour_key(env, day).rsplit("/", 1)[0] + "/")
            day += timedelta(days=1)
        part_keys(store, env, check_only=True)
        with ThreadPoolExecutor(READ_WORKERS) as pool:
            keys = [
                key
                for listed in pool.map(lambda p: part_keys(store, p), prefixes)
                for key in listed
            ]
    hours = group_hours(keys)
    return [
        hours[hour]
        for hour in sorted(hours, reverse=True)
        if since is None or hour + timedelta(hours=1) > since
    ]


def read_manifest(store: PartStore, hour: Hour, name: str) -> dict:
    body = read_part(store, hour.key(name))
    try:
        manifest = orjson.loads(body)
        if not all(isinstance(manifest.get(f), list) for f in ("sources", "objects")):
            raise TypeError("no 'sources' and 'objects' lists")
    except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
        raise PredictionLogError(
            f"{store.url}/{hour.key(name)} is not a compaction manifest ({exc}); remove it and "
            "run compact again"
        ) from None
    return manifest


def data_keys(store: PartStore, hour: Hour) -> list[str]:
    """The keys that hold the hour's records, each record once: the merged objects the
    manifests commit, and the parts no manifest covers (written after a compaction, or
    not compacted yet). Merged objects without a manifest (a compaction that stopped
    before its commit) and parts a manifest covers (not deleted yet) are skipped."""
    covered: set[str] = set()
    merged: list[str] = []
    for name in sorted(hour.manifests):
        manifest = read_manifest(store, hour, name)
        covered.update(manifest["sources"])
        merged += [entry["name"] for entry in manifest["objects"]]
    return [hour.key(name) for name in merged] + [
        hour.key(name) for name in sorted(hour.parts) if name not in covered
    ]


def fetch(store: PartStore, keys: list[str], pool: ThreadPoolExecutor) -> list[Future[bytes]]:
    """GETs of `keys`, started on `pool`."""
    return [pool.submit(read_part, store, key) for key in keys]


def decode_part(body: bytes, source: str) -> list[dict]:
    try:
        return partformat.decode(body)
    except (OSError, EOFError, orjson.JSONDecodeError) as exc:
        raise PredictionLogError(f"{source} is not a gzip JSON Lines part: {exc}") from None


def read_records(
    store: PartStore, env: str, since: datetime | None = None, workers: int = READ_WORKERS
) -> Iterator[dict]:
    """Every record of `env` answered at or after `since`, newest first, hour by hour.

    The objects of an hour are fetched `workers` at a time while the previous hour is
    decoded; each record is read once, from a merged object or from its part.
    """
    hours = list_hours(store, env, since)
    cutoff = _iso(since) if since else None
    with ThreadPoolExecutor(max(1, workers)) as pool:
        plans = ((hour, pool.submit(data_keys, store, hour)) for hour in hours)
        pending: list[tuple[Hour, list[str], list[Future[bytes]]]] = []
        for hour, plan in plans:
            keys = plan.result()
            pending.append((hour, keys, fetch(store, keys, pool)))
            if len(pending) < 2:  # one hour in flight while the one before is decoded
                continue
            yield from _hour_records(store, *pending.pop(0), cutoff)
        for hour, keys, bodies in pending:
            yield from _hour_records(store, hour, keys, bodies, cutoff)


def _hour_records(
    store: PartStore,
    hour: Hour,
    keys: list[str],
    bodies: list[Future[bytes]],
    cutoff: str | None,
) -> list[dict]:
    keys, read = hour_results(store, hour, keys, bodies, lambda key: read_part(store, key))
    records = [
        record
        for key, body in zip(keys, read, strict=True)
        for record in decode_part(body, f"{store.url}/{key}")
        if cutoff is None or record.get("time", "") >= cutoff
    ]
    records.sort(key=lambda record: (record.get("time", ""), record.get("id", "")), reverse=True)
    return records


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`2h`, `30m`, `1d`, `45s` (ago), or an ISO 8601 date/time (UTC unless it says), as
    an aware UTC datetime.

    Raises PredictionLogError for any other text, and for a moment Python's datetime
    cannot hold (before year 1 or after year 9999 in UTC: `1000000d` ago, or
    `0001-01-01T00:00+05:00`), where datetime raises OverflowError.
    """
    now = now or datetime.now(UTC)
    relative = _RELATIVE.match(text.strip().lower())
    try:
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
    except OverflowError:
        raise PredictionLogError(
            f"--since {text!r} is outside the UTC dates from year 1 to 9999: give a shorter "
            "duration, or a date in that range (2025-01-31)"
        ) from None


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


def _s3_client() -> Any:
    # One pooled connection per reading thread (botocore keeps 10 by default).
    return aws.client("s3", max_pool_connections=READ_WORKERS)


def _iso(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
