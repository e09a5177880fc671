"""Capture-read rows: a task-hour of parts read back, compacted, and a compacted day read.

On the moto S3 server on loopback (`bench.moto`), one run measures:

- `sequential GETs (baseline)`: the simplest reader: one GET at a time, each part
  decoded into records, the statistics over the records;
- `report engine`: `pipeline.predictions.engine` (16 parallel GETs, DuckDB);
- `compaction`: `pipeline.predictions.compact.compact_hour` of that hour, from listing to
  the parts' deletion;
- `report engine, compacted day`: the engine over 24 compacted task-hours (`--since 24h`);
- `compaction, peak-size parts`: the same records in parts of 10,000 records, as a task at
  its peak writes them (a part a second, `encode_parts`' max_records): what the
  compaction rate is compared with the peak capture rate on.

A task-hour is 3,600 parts of 100 records (one part a second at 100 requests/s, as the
recorder writes them: `encode_parts`, one record per `/predict` request, 10 scores).
The compacted day is the compacted hour's object copied to the 23 hours before it
(S3 CopyObject, with a manifest each): the same bytes a day of compaction would leave.

Each row also records the CPU seconds the S3 server (moto, on the same cores) spent
during it, from /proc/<pid>/stat. moto spends about 2.5 ms of CPU on each GET in one
Python process, whatever the client asks (measured with py-spy: Flask/werkzeug request
handling, its request log, the service lookup; botocore's flexible checksums changed
nothing), so no reader of the task-hour can finish before moto has spent that CPU on its
3,600 GETs: `ceiling()` is the sequential reader's time over it, the most any reader
can gain over the baseline on this server.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson

from bench.processes import cpu_seconds
from pipeline.predictions import compact, engine, statistics
from pipeline.predictions import store as parts
from service.capture import partformat
from service.capture.records import PartNamer, Pending, encode_parts
from service.model import ModelInfo

PARTS_PER_HOUR = 3600
RECORDS_PER_PART = 100
# A task at its peak still writes a part a second, of up to 10,000 records
# (`encode_parts`' max_records): the compaction row at peak merges such parts.
PEAK_RECORDS_PER_PART = 10_000
ENV = "bench"
PEAK_ENV = "bench-peak"
UPLOAD_WORKERS = 16


@dataclass(frozen=True)
class ReadRow:
    name: str
    records: int
    objects: int
    seconds: float
    # CPU seconds the S3 server spent during the row (None: not measured).
    server_cpu_seconds: float | None = None

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


@dataclass
class CaptureRead:
    rows: list[ReadRow] = field(default_factory=list)
    objects_per_task_hour: int | None = None

    def row(self, name: str) -> ReadRow | None:
        return next((row for row in self.rows if row.name == name), None)

    def ceiling(self) -> float | None:
        """The sequential reader's seconds over the S3 server's CPU seconds during the
        engine's read of the same parts: the most any reader of them could gain over the
        sequential one, however little CPU the reader itself spends (None: not measured)."""
        baseline, read = self.row(SEQUENTIAL), self.row(ENGINE)
        if baseline is None or read is None or not read.server_cpu_seconds:
            return None
        return baseline.seconds / read.server_cpu_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": [
                asdict(row) | {"records_per_second": row.records_per_second} for row in self.rows
            ],
            "objects_per_task_hour": self.objects_per_task_hour,
            "ceiling_over_sequential": self.ceiling(),
        }


SEQUENTIAL = "sequential GETs (baseline)"
ENGINE = "report engine"


def task_hour(
    hour: datetime, parts_per_hour: int, records_per_part: int, env: str = ENV
) -> list[Any]:
    """One task's hour of parts, as the recorder encodes them (random logits)."""
    rng = np.random.default_rng(14)
    info = ModelInfo("mnist-8", "1", "cd" * 32)
    namer = PartNamer()
    start = hour.timestamp()
    encoded = []
    for index in range(parts_per_hour):
        scores = rng.normal(0.0, 3.0, (records_per_part, 10)).astype(np.float32)
        second = start + index * 3600 / parts_per_hour
        entries = [
            Pending(
                second + row / records_per_part,
                "/predict",
                None,
                info,
                scores[row : row + 1],
                None,
                0.002,
            )
            for row in range(records_per_part)
        ]
        encoded += encode_parts(entries, env, namer)
    return encoded


@contextmanager
def aws_environment(env: dict[str, str]):
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def sequential(store: parts.PartStore, since: datetime | None) -> int:
    """The baseline reader: one GET at a time, every record decoded in Python."""
    keys = [
        key for hour in parts.list_hours(store, ENV, since) for key in parts.data_keys(store, hour)
    ]
    records = (record for key in keys for record in partformat.decode(parts.read_part(store, key)))
    return statistics.summarise(records, ENV).total


class CaptureReadError(Exception):
    """A reader found another number of records than were written."""


def timed(
    name: str, objects: int, expected: int, read: Callable[[], int], server: int | None = None
) -> ReadRow:
    """Time `read()` (which returns the records it read) and check its count; with
    `server`, the CPU seconds that process (the S3 server) spent meanwhile."""
    server_before = cpu_seconds(server) if server else 0.0
    started = time.perf_counter()
    records = read()
    seconds = time.perf_counter() - started
    server_cpu = cpu_seconds(server) - server_before if server else None
    if records != expected:
        raise CaptureReadError(f"{name}: read {records:,} records, {expected:,} were written")
    return ReadRow(name, records, objects, seconds, server_cpu)


def measure(
    url: str,
    aws_env: dict[str, str],
    hours: int = 24,
    parts_per_hour: int = PARTS_PER_HOUR,
    records_per_part: int = RECORDS_PER_PART,
    server: int | None = None,
) -> CaptureRead:
    """Every capture-read row against the S3 store at `url` (its bucket exists, empty);
    `server` is the S3 server's process id, whose CPU each row then records."""
    result = CaptureRead()
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    first = now - timedelta(hours=hours)
    since = first - timedelta(minutes=1)
    with aws_environment(aws_env):
        store = parts.open_store(url)
        log(f"encoding one task-hour: {parts_per_hour} parts of {records_per_part} records")
        encoded = task_hour(first, parts_per_hour, records_per_part)
        records = sum(part.records for part in encoded)
        with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
            list(pool.map(lambda p: store.put_new(p.key, p.body, partformat.CONTENT_TYPE), encoded))

        def report() -> int:
            return statistics.summary(engine.aggregate_store(store, ENV, since), ENV).total

        log("reading it back: sequential GETs, then the report engine")
        n = len(encoded)
        result.rows.append(timed(SEQUENTIAL, n, records, lambda: sequential(store, since), server))
        result.rows.append(timed(ENGINE, n, records, report, server))
        log("compacting it")
        result.rows.append(
            timed(
                "compaction",
                len(encoded),
                records,
                lambda: compact.compact(store, ENV, hour=first, now=now)[0].records,
                server,
            )
        )
        hour = parts.list_hours(store, ENV, since)[0]
        result.objects_per_task_hour = len(parts.data_keys(store, hour))
        log(f"copying the compacted hour to {hours - 1} more hours, reading the {hours} hours")
        copy_hours(store, hour, [first + timedelta(hours=h) for h in range(1, hours)])
        objects = hours * len(hour.compacted)
        day = f"report engine, compacted {hours} h"
        result.rows.append(timed(day, objects, records * hours, report, server))
        result.rows.append(peak_compaction(store, first, now, records, records_per_part, server))
    return result


def peak_compaction(
    store: parts.PartStore,
    hour: datetime,
    now: datetime,
    records: int,
    records_per_part: int,
    server: int | None = None,
) -> ReadRow:
    """Compaction of `records` in parts as a task at its peak writes them."""
    per_part = min(PEAK_RECORDS_PER_PART, records)
    count = max(1, records // per_part)
    log(f"compacting {count} peak-size parts of {per_part} records")
    encoded = task_hour(hour, count, per_part, PEAK_ENV)
    with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
        list(pool.map(lambda p: store.put_new(p.key, p.body, partformat.CONTENT_TYPE), encoded))
    return timed(
        f"compaction, peak-size parts ({per_part:,} records)",
        len(encoded),
        count * per_part,
        lambda: compact.compact(store, PEAK_ENV, hour=hour, now=now)[0].records,
        server,
    )


def copy_hours(store: parts.PartStore, source: parts.Hour, hours: list[datetime]) -> None:
    """The merged objects and manifest of `source`, copied (CopyObject) to each of `hours`.

    A merged object is a multipart upload with a composite SHA-256 (`<digest>-<parts>`);
    S3 gives a copy a checksum of its whole bytes, computed anew with ChecksumAlgorithm
    (S3 user guide, "Checking object integrity", copy operations). Without it moto copies
    the composite value as a whole-object one, which botocore's GetObject check refuses.
    """
    manifest = parts.read_manifest(store, source, source.manifests[0])

    def copy(hour: datetime) -> None:
        prefix = partformat.hour_key(ENV, hour)
        for name in source.compacted:
            store.client.copy_object(
                Bucket=store.bucket,
                Key=store.key(f"{prefix}/{name}"),
                CopySource={"Bucket": store.bucket, "Key": store.key(source.key(name))},
                ChecksumAlgorithm="SHA256",
            )
        body = orjson.dumps(manifest | {"hour": hour.isoformat()})
        store.put_new(f"{prefix}/{source.manifests[0]}", body, "application/json")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(copy, hours))


def log(message: str) -> None:
    print(f"bench: capture read: {message}", file=sys.stderr, flush=True)


def table(found: CaptureRead) -> str:
    """The capture-read rows as Markdown."""
    lines = [
        "| capture read (moto S3) | records | objects | seconds | records/s | moto CPU s "
        "| moto CPU ms/object |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in found.rows:
        cpu = row.server_cpu_seconds
        lines.append(
            f"| {row.name} | {row.records:,} | {row.objects:,} | {row.seconds:.2f} "
            f"| {row.records_per_second:,.0f} | {'-' if cpu is None else f'{cpu:.2f}'} "
            f"| {'-' if cpu is None else f'{cpu / row.objects * 1000:.2f}'} |"
        )
    return "\n".join(lines)
