"""Statistics of captured predictions: counts per class, hour and model, request latency
percentiles, and drift against the test set's labels.

The predicted class distribution is compared with the labels' by total variation
distance (above `DRIFT_TVD_THRESHOLD` it is flagged as possible drift) and by a
chi-square goodness-of-fit test: a shift there is the first sign of drift.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from pipeline.datasets import read_csv_labels, read_idx_labels
from pipeline.reference import fetch_artifact, load_reference

# Above this total variation distance the predicted classes no longer look like the test set.
DRIFT_TVD_THRESHOLD = 0.1


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


def test_set_labels() -> np.ndarray:
    """The labels of the reference test set (model.toml), verified by sha256."""
    reference = load_reference(environ=os.environ)
    path = fetch_artifact(reference.test_labels)
    return read_idx_labels(path) if reference.test_format == "idx" else read_csv_labels(path)
