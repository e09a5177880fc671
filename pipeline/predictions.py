"""Read captured predictions back: `logs` prints them, `report` summarises them.

The service writes each environment's records (see `service.capture.records`)
under `<PREDICTION_LOG_URL>/<env>/YYYY/MM/DD/HH/<part>.jsonl.gz`, on S3 or on
local disk. `logs` prints them one JSON object per line, newest first (one
environment's prediction log); `report` counts them per class and
per hour, gives latency percentiles, and compares the predicted class
distribution with the test set's labels (total variation distance and a
chi-square test): a shift there is the first sign of drift.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import numpy as np
import orjson

from pipeline.datasets import read_csv_labels, read_idx_labels
from pipeline.reference import fetch_artifact, load_reference
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
# Above this total variation distance the predicted classes no longer look like the test set.
DRIFT_TVD_THRESHOLD = 0.1
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


# -- the report -------------------------------------------------------------------


@dataclass
class Summary:
    env: str
    total: int = 0
    first: str | None = None
    last: str | None = None
    per_class: Counter = field(default_factory=Counter)
    per_hour: Counter = field(default_factory=Counter)
    per_model: Counter = field(default_factory=Counter)
    latency_ms: dict[str, float] = field(default_factory=dict)
    baseline: dict[int, float] | None = None
    tvd: float | None = None
    chi_square: float | None = None
    degrees_of_freedom: int | None = None
    p_value: float | None = None

    @property
    def drifted(self) -> bool:
        return self.tvd is not None and self.tvd > DRIFT_TVD_THRESHOLD


def summarise(
    records: Iterable[dict], env: str, baseline_labels: np.ndarray | None = None
) -> Summary:
    """Counts per class, hour and model; request latency percentiles; drift against labels."""
    summary = Summary(env)
    latencies = []
    for record in records:
        summary.total += 1
        summary.per_class[int(record["prediction"])] += 1
        moment = record.get("time", "")
        summary.per_hour[moment[:13].replace("T", " ") + ":00"] += 1
        model = record.get("model", {})
        summary.per_model[f"{model.get('name')} {model.get('version')}"] += 1
        summary.first = min(summary.first or moment, moment)
        summary.last = max(summary.last or moment, moment)
        if record.get("row", 0) == 0 and "latency_ms" in record:  # once per request
            latencies.append(float(record["latency_ms"]))
    if latencies:
        values = np.percentile(latencies, [50, 90, 99])
        summary.latency_ms = {
            "p50": float(values[0]),
            "p90": float(values[1]),
            "p99": float(values[2]),
            "max": max(latencies),
        }
    if baseline_labels is not None and summary.total:
        _compare(summary, baseline_labels)
    return summary


def _compare(summary: Summary, labels: np.ndarray) -> None:
    classes, counts = np.unique(labels, return_counts=True)
    expected = {int(c): int(n) / len(labels) for c, n in zip(classes, counts, strict=True)}
    summary.baseline = expected
    every = sorted(set(expected) | set(summary.per_class))
    observed = {c: summary.per_class.get(c, 0) / summary.total for c in every}
    summary.tvd = 0.5 * sum(abs(observed[c] - expected.get(c, 0.0)) for c in every)
    if any(summary.per_class.get(c, 0) and not expected.get(c) for c in every):
        summary.chi_square, summary.p_value = math.inf, 0.0
    else:
        summary.chi_square = sum(
            (summary.per_class.get(c, 0) - summary.total * p) ** 2 / (summary.total * p)
            for c, p in expected.items()
        )
        summary.p_value = chi_square_p_value(summary.chi_square, len(expected) - 1)
    summary.degrees_of_freedom = len(expected) - 1


def chi_square_p_value(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X ~ chi-square(dof): the regularized upper gamma Q(dof/2, x/2)."""
    a, x = dof / 2, statistic / 2
    if x <= 0:
        return 1.0
    if x < a + 1:  # series for the lower function P, then Q = 1 - P
        term = total = 1 / a
        n = a
        while abs(term) > abs(total) * 1e-15:
            n += 1
            term *= x / n
            total += term
        return max(0.0, 1 - total * math.exp(-x + a * math.log(x) - math.lgamma(a)))
    # continued fraction for Q (Lentz's method)
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h * math.exp(-x + a * math.log(x) - math.lgamma(a))


def format_table(summary: Summary) -> str:
    """The summary as plain-text tables for the terminal."""
    lines = [
        f"predictions in {summary.env}: {summary.total} records from {summary.first} to "
        f"{summary.last}",
        "",
        "models:  " + ", ".join(f"{name} ({n})" for name, n in summary.per_model.most_common()),
    ]
    if summary.latency_ms:
        lines.append(
            "latency per request (ms):  "
            + "  ".join(f"{k} {v:.2f}" for k, v in summary.latency_ms.items())
        )
    lines += ["", f"{'class':>5}  {'count':>8}  {'share':>7}  {'test set':>8}  {'diff':>7}"]
    classes = sorted(set(summary.per_class) | set(summary.baseline or {}))
    for label in classes:
        count = summary.per_class.get(label, 0)
        share = count / summary.total if summary.total else 0.0
        row = f"{label:>5}  {count:>8}  {share:>7.1%}"
        if summary.baseline is not None:
            expected = summary.baseline.get(label, 0.0)
            row += f"  {expected:>8.1%}  {share - expected:>+7.1%}"
        lines.append(row)
    if summary.tvd is not None:
        verdict = (
            "DRIFT? the predicted classes moved away from the test set"
            if (summary.drifted)
            else "no drift signal"
        )
        lines += [
            "",
            f"total variation distance to the test set: {summary.tvd:.3f} "
            f"(threshold {DRIFT_TVD_THRESHOLD}): {verdict}",
            f"chi-square: {summary.chi_square:.1f} with {summary.degrees_of_freedom} degrees of "
            f"freedom, p = {summary.p_value:.3g}",
        ]
    lines += ["", f"{'hour (UTC)':<16}  {'count':>8}"]
    lines += [f"{hour:<16}  {n:>8}" for hour, n in sorted(summary.per_hour.items(), reverse=True)]
    return "\n".join(lines)


def plot(summary: Summary, path: Path) -> Path:
    """A PNG with the class distribution (against the test set's) and the count per hour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (classes_axis, hours_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = sorted(set(summary.per_class) | set(summary.baseline or {}))
    positions = np.arange(len(labels))
    shares = [summary.per_class.get(c, 0) / max(summary.total, 1) for c in labels]
    classes_axis.bar(positions - 0.2, shares, width=0.4, label=f"{summary.env} predictions")
    if summary.baseline is not None:
        expected = [summary.baseline.get(c, 0.0) for c in labels]
        classes_axis.bar(positions + 0.2, expected, width=0.4, label="test set labels")
        classes_axis.set_title(f"Classes (TVD {summary.tvd:.3f})")
    else:
        classes_axis.set_title("Classes")
    classes_axis.set_xticks(positions, [str(c) for c in labels])
    classes_axis.set_ylabel("share")
    classes_axis.legend()
    hours = sorted(summary.per_hour)
    hours_axis.bar(range(len(hours)), [summary.per_hour[h] for h in hours])
    hours_axis.set_xticks(range(len(hours)), hours, rotation=45, ha="right", fontsize=7)
    hours_axis.set_title("Predictions per hour (UTC)")
    figure.suptitle(f"Prediction capture: {summary.env}, {summary.total} records")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def test_set_labels() -> np.ndarray:
    """The labels of the reference test set (model.toml), verified by sha256."""
    reference = load_reference(environ=os.environ)
    path = fetch_artifact(reference.test_labels)
    return read_idx_labels(path) if reference.test_format == "idx" else read_csv_labels(path)


def _iso(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
