"""The report's local engine: DuckDB over the hour's objects, read where they are.

Decoding records into Python dicts costs about 6 µs a record (orjson, measured on a
merged task-hour of 360,000 records: 2.1 s); DuckDB's JSON reader computes every
figure of the report over the same gzip object in 0.34 s, pyarrow's reader parses
it in 1.0 s before any figure (`python bench/capture_engines.py`, README). So the
report downloads the objects the hour's manifests name (`store.data_keys`: each
record once) in parallel into a temporary directory, or reads a local store's files
in place, and asks DuckDB for `statistics.Aggregates`.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np

from pipeline.predictions.statistics import Aggregates
from pipeline.predictions.store import (
    READ_WORKERS,
    PartStore,
    PredictionLogError,
    _iso,
    data_keys,
    list_hours,
    read_part,
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
# A row's top-class probability: its maximum when it is a distribution already, else
# softmax's (`statistics.top_probabilities`, the same rule in numpy).
TOP_PROBABILITY = """CASE
    WHEN list_min(scores) >= 0 AND abs(list_sum(scores) - 1) <= 1e-3 THEN list_max(scores)
    ELSE 1 / list_sum(list_transform(scores, lambda x: exp(x - list_max(scores))))
END"""


def object_files(
    store: PartStore, env: str, since: datetime | None, directory: Path, workers: int
) -> list[Path]:
    """The files holding `env`'s records since `since`, each record once: a local store's
    own files, or, from S3, one file per hour: the objects downloaded `workers` at a time,
    then each hour's appended into one (`partformat.merge`'s layout: DuckDB then opens
    24 files for a day of parts instead of 86,400)."""
    hours = list_hours(store, env, since)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        keys = list(pool.map(lambda h: data_keys(store, h), hours))
        if isinstance(store, LocalStore):
            return [store.root / key for listed in keys for key in listed]

        def download(key: str) -> Path:
            path = directory / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(read_part(store, key))
            return path

        downloaded = list(pool.map(download, [key for listed in keys for key in listed]))
    files, start = [], 0
    for listed in keys:
        pieces, start = downloaded[start : start + len(listed)], start + len(listed)
        if len(pieces) > 1:
            with pieces[0].open("ab") as merged:
                for piece in pieces[1:]:
                    merged.write(piece.read_bytes())
                    piece.unlink()
        files += pieces[:1]
    return files


def aggregate_files(files: list[Path], since: datetime | None = None) -> Aggregates:
    """The report's aggregates over gzip JSON Lines `files` (records at or after `since`)."""
    import duckdb

    result = Aggregates()
    if not files:
        return result
    listing = ", ".join("'" + str(path).replace("'", "''") + "'" for path in files)
    columns = ", ".join(f"'{name}': '{kind}'" for name, kind in COLUMNS.items())
    where = f"WHERE time >= '{_iso(since)}'" if since else ""
    connection = duckdb.connect()
    try:
        connection.execute(
            f"""CREATE TEMP TABLE records AS
            SELECT replace(substr(time, 1, 13), 'T', ' ') || ':00' AS hour, *
            FROM read_json([{listing}], format = 'newline_delimited', compression = 'gzip',
                columns = {{{columns}}}) {where}"""
        )
        for hour, label, count in connection.execute(
            "SELECT hour, prediction, count(*) FROM records GROUP BY ALL"
        ).fetchall():
            result.classes.setdefault(hour, Counter())[int(label)] = int(count)
        for hour, total, count in connection.execute(
            f"SELECT hour, sum({TOP_PROBABILITY}), count(*) FROM records "
            "WHERE scores IS NOT NULL GROUP BY ALL"
        ).fetchall():
            result.top[hour] = (float(total), int(count))
        for model, count in connection.execute(
            "SELECT model.name || ' ' || model.version, count(*) FROM records GROUP BY ALL"
        ).fetchall():
            result.models[str(model)] = int(count)
        result.first, result.last = connection.execute(
            "SELECT min(time), max(time) FROM records"
        ).fetchone()
        quantiles, slowest = connection.execute(
            "SELECT quantile_cont(latency_ms, [0.5, 0.9, 0.99]), max(latency_ms) FROM records "
            "WHERE coalesce(row, 0) = 0 AND latency_ms IS NOT NULL"
        ).fetchone()
        if quantiles is not None:
            result.latency_ms = dict(zip(("p50", "p90", "p99"), map(float, quantiles), strict=True))
            result.latency_ms["max"] = float(slowest)
        means = connection.execute(
            "SELECT hour, list_avg(inputs) AS mean FROM records WHERE inputs IS NOT NULL"
        ).fetchnumpy()
        for hour in np.unique(means["hour"]):
            result.inputs[str(hour)] = np.asarray(means["mean"][means["hour"] == hour], float)
    except duckdb.Error as exc:
        raise PredictionLogError(f"reading the captured records: {exc}") from None
    finally:
        connection.close()
    return result


def aggregate_store(
    store: PartStore, env: str, since: datetime | None = None, workers: int = READ_WORKERS
) -> Aggregates:
    """The report's aggregates of `env`'s records since `since`, read with DuckDB."""
    with tempfile.TemporaryDirectory(prefix="capture-") as directory:
        files = object_files(store, env, since, Path(directory), workers)
        return aggregate_files(files, since)
