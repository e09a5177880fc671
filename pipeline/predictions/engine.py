"""The report's local engine: DuckDB over the hour's objects, read where they are.

Decoding records into Python dicts costs about 6 µs a record (orjson, measured on a
merged task-hour of 360,000 records: 2.1 s); DuckDB's JSON reader computes every
figure of the report over the same gzip object in 0.34 s, pyarrow's reader parses
it in 1.0 s before any figure (measured once, by a script not kept; the bench's
capture-read rows measure this engine against the baseline reader). So the
report downloads the objects the hour's manifests name (`store.data_keys`: each
record once) in parallel into a temporary directory, or reads a local store's files
in place, and asks DuckDB for `statistics.Aggregates`.
"""

from __future__ import annotations

import itertools
import tempfile
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.predictions.statistics import Aggregates, class_key
from pipeline.predictions.store import (
    READ_WORKERS,
    Hour,
    PartGoneError,
    PartStore,
    PredictionLogError,
    _iso,
    data_keys,
    hour_results,
    list_hours,
    read_part,
    relisted,
)
from service.store import LocalStore

# The record fields the report reads (`service.capture.records`), as DuckDB types: naming
# them skips the reader's schema sniffing, and a field no record has is NULL.
COLUMNS = {
    "time": "VARCHAR",
    "row": "INTEGER",
    "prediction": "INTEGER",
    "scores": "DOUBLE[]",
    "latency_ms": "DOUBLE",
    "model": "STRUCT(name VARCHAR, version VARCHAR)",
    "inputs": "DOUBLE[]",
}
# Hours downloaded ahead of the one DuckDB reads: a bound on the disk a report uses
# (4 compacted task-hours: ~150 MB).
LOOKAHEAD_HOURS = 4
# A row's top-class probability: its maximum when it is a distribution already, else
# softmax's (`statistics.top_probabilities`, the same rule in numpy).
# NULL for a record whose scores hold a null (a NaN or an infinity): no probability, as
# the other engines count it (statistics._add_top).
TOP_PROBABILITY = """CASE
    WHEN list_count(scores) < len(scores) THEN NULL
    WHEN list_min(scores) >= 0 AND abs(list_sum(scores) - 1) <= 1e-3 THEN list_max(scores)
    ELSE 1 / list_sum(list_transform(scores, lambda x: exp(x - list_max(scores))))
END"""


def hour_files(
    store: PartStore, env: str, since: datetime | None, directory: Path, workers: int
) -> Iterator[tuple[Hour, list[Path]]]:
    """Each hour (newest first) and the files holding its records, each record once: a
    local store's own files, or an S3 hour's objects downloaded `workers` at a time into
    `directory` and appended into one file (`partformat.merge`'s layout: DuckDB opens one
    file an hour, not 3,600). Downloads run up to LOOKAHEAD_HOURS ahead of the consumer,
    so DuckDB computes one hour while the next ones arrive; an hour's files are removed
    once the consumer asks for the next. A local store's files may be deleted by a
    compaction before DuckDB opens them: `_read_hour` plans such an hour again."""
    hours = list_hours(store, env, since)
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        plans = [pool.submit(data_keys, store, hour) for hour in hours]
        if isinstance(store, LocalStore):
            for hour, plan in zip(hours, plans, strict=True):
                yield hour, [store.root / key for key in plan.result()]
            return

        def download(key: str) -> Path:
            path = directory / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(read_part(store, key))
            return path

        pending: deque[tuple[Hour, list[str], list[Future[Path]]]] = deque()
        ahead = zip(hours, plans, strict=True)
        for _ in hours:
            for hour, plan in itertools.islice(ahead, LOOKAHEAD_HOURS - len(pending)):
                keys = plan.result()
                pending.append((hour, keys, [pool.submit(download, key) for key in keys]))
            hour, *started = pending.popleft()
            _, paths = hour_results(store, hour, *started, download)
            if len(paths) > 1:
                with paths[0].open("ab") as merged:
                    for path in paths[1:]:
                        merged.write(path.read_bytes())
                        path.unlink()
            yield hour, paths[:1]
            for path in paths[:1]:
                path.unlink()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def aggregate_store(
    store: PartStore, env: str, since: datetime | None = None, workers: int = READ_WORKERS
) -> Aggregates:
    """The report's aggregates of `env`'s records since `since`, read with DuckDB."""
    import duckdb

    result = Aggregates()
    latencies: list[np.ndarray] = []
    connection = duckdb.connect()
    try:
        with tempfile.TemporaryDirectory(prefix="capture-") as directory:
            for hour, files in hour_files(store, env, since, Path(directory), workers):
                latencies.append(_read_hour(connection, result, store, hour, files, since))
    except duckdb.Error as exc:
        raise PredictionLogError(f"reading the captured records: {exc}") from None
    finally:
        connection.close()
    every = np.concatenate(latencies) if latencies else np.empty(0)
    if every.size:  # numpy's default (linear) percentile is DuckDB's quantile_cont
        p50, p90, p99 = np.percentile(every, [50, 90, 99])
        result.latency_ms = {
            "p50": float(p50),
            "p90": float(p90),
            "p99": float(p99),
            "max": float(every.max()),
        }
    return result


def _read_hour(
    connection: Any,
    result: Aggregates,
    store: PartStore,
    hour: Hour,
    files: list[Path],
    since: datetime | None,
) -> np.ndarray:
    """`_add` of the hour's `files`. DuckDB reads a local store's files in place, so a
    compaction committing the hour meanwhile deletes parts it is about to open (DuckDB's
    IOException; `_add` changes nothing before its read succeeds): the hour is then
    listed again and its merged objects read, once, as `store.hour_results` does for S3.
    Raises PartGoneError when a file is gone again."""
    import duckdb

    try:
        return _add(connection, result, files, since)
    except duckdb.IOException:
        if all(path.is_file() for path in files):
            raise
    assert isinstance(store, LocalStore)  # an S3 hour's files are the report's own
    files = [store.root / key for key in data_keys(store, relisted(store, hour))]
    try:
        return _add(connection, result, files, since)
    except duckdb.IOException:
        gone = [path for path in files if not path.is_file()]
        if not gone:
            raise
        raise PartGoneError(
            f"{gone[0]} was listed but is gone "
            "(a compaction merged it meanwhile); run the command again"
        ) from None


def _add(
    connection: Any, result: Aggregates, files: list[Path], since: datetime | None
) -> np.ndarray:
    """Add the records of `files` to `result`; their requests' latencies ([n] float64, ms)."""
    if not files:
        return np.empty(0)
    listing = ", ".join("'" + str(path).replace("'", "''") + "'" for path in files)
    columns = ", ".join(f"'{name}': '{kind}'" for name, kind in COLUMNS.items())
    where = f"WHERE time >= '{_iso(since)}'" if since else ""
    connection.execute(
        f"""CREATE OR REPLACE TEMP TABLE records AS
        SELECT replace(substr(time, 1, 13), 'T', ' ') || ':00' AS hour, *
        FROM read_json([{listing}], format = 'newline_delimited', compression = 'gzip',
            columns = {{{columns}}}) {where}"""
    )
    for hour, label, count in connection.execute(
        "SELECT hour, prediction, count(*) FROM records GROUP BY ALL"
    ).fetchall():
        result.classes.setdefault(hour, Counter())[class_key(label)] += int(count)
    for hour, total, count in connection.execute(
        f"SELECT hour, sum({TOP_PROBABILITY}), count({TOP_PROBABILITY}) FROM records "
        "WHERE scores IS NOT NULL GROUP BY ALL"
    ).fetchall():
        if not count:
            continue
        before_total, before_count = result.top.get(hour, (0.0, 0))
        result.top[hour] = (before_total + float(total), before_count + int(count))
    for model, count in connection.execute(
        "SELECT model.name || ' ' || model.version, count(*) FROM records GROUP BY ALL"
    ).fetchall():
        result.models[str(model)] += int(count)
    first, last = connection.execute("SELECT min(time), max(time) FROM records").fetchone()
    if first is not None:
        result.first = min(result.first or first, first)
        result.last = max(result.last or last, last)
    means = connection.execute(
        "SELECT hour, list_avg(inputs) AS mean FROM records WHERE inputs IS NOT NULL"
    ).fetchnumpy()
    for hour in np.unique(means["hour"]):
        found = np.asarray(means["mean"][means["hour"] == hour], float)
        result.inputs[str(hour)] = np.concatenate([result.inputs.get(str(hour), []), found])
    return (
        connection.execute(
            "SELECT latency_ms FROM records WHERE coalesce(row, 0) = 0 AND latency_ms IS NOT NULL"
        )
        .fetchnumpy()["latency_ms"]
        .astype(np.float64)
    )
