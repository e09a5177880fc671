"""Statistics of captured predictions: counts per class, hour and model, request latency
percentiles, and drift against the test set, as effect sizes.

With hundreds of thousands of records every difference is statistically significant
(a chi-square p-value of 1e-270 says only that n is large), so the verdicts rest on
how far the distributions moved, not on whether they did:

- total variation distance (TVD) of the predicted classes against the test set's
  labels, `0.5 * sum |p_i - q_i|`: the share of predictions that would have to change
  class to match. Above `TVD_THRESHOLD` (0.1) it is flagged.
- population stability index (PSI), `sum (p_i - q_i) ln(p_i / q_i)`: below 0.1 stable,
  0.1 to 0.25 a moderate shift, above 0.25 a significant one (the thresholds credit
  scoring uses for score distributions; Siddiqi, "Credit Risk Scorecards", 2006).
- the mean top-class probability per hour (softmax of the scores when they are not
  probabilities already): confidence falling while the classes hold still is drift
  in the inputs the class counts have not shown yet.
- when inputs are captured, each record's mean input value against the test set
  images' (scaled as the model takes them), as PSI over the test set's deciles.

No verdict below `MIN_RECORDS` (1,000) records, overall, in an hour or with inputs: sampling
alone moves the estimates. For k equally likely classes and n records, TVD's
expected value with no drift at all is about `0.4 * k * sqrt((1/k)(1 - 1/k) / n)`
(0.038 for k = 10, n = 1,000: under half the threshold; for n = 4 it says 0.6, a
simulation 0.66) and PSI's is about `(k - 1) / n` (0.009). The chi-square test is kept
as a footnote.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from pipeline.datasets import read_csv_images, read_csv_labels, read_idx_images, read_idx_labels
from pipeline.reference import fetch_artifact, load_reference

TVD_THRESHOLD = 0.1
PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.25
MIN_RECORDS = 1000
# PSI's logarithm needs every share above zero: an empty class counts as this share.
PSI_FLOOR = 1e-4


@dataclass
class HourDrift:
    """One UTC hour (`YYYY-MM-DD HH:00`): its record count, the class TVD and PSI against
    the test set (None without a baseline), the mean top-class probability, and the mean
    input value (None without captured inputs)."""

    hour: str
    records: int
    tvd: float | None = None
    psi: float | None = None
    mean_top_score: float | None = None
    mean_input: float | None = None

    @property
    def enough(self) -> bool:
        return self.records >= MIN_RECORDS

    @property
    def note(self) -> str:
        """The hour's verdict, by the rule of the overall one (`shift`); "" without a
        baseline."""
        if not self.enough:
            return f"under {MIN_RECORDS} records: no verdict"
        if self.tvd is None:
            return ""
        return _HOUR_NOTES[shift(self.psi, self.tvd)]


def shift(psi: float | None, tvd: float | None = None) -> str:
    """How far the shares moved, by their PSI (and TVD): "drift" above PSI_SIGNIFICANT (or
    TVD_THRESHOLD), "moderate" above PSI_MODERATE, else "stable"; None counts as 0.

    The PSI bands are credit scoring's (Siddiqi, "Credit Risk Scorecards", 2006); the TVD
    threshold is this project's own, 2.6 times the TVD that MIN_RECORDS records of
    unchanged traffic show by chance."""
    if (tvd or 0.0) > TVD_THRESHOLD or (psi or 0.0) > PSI_SIGNIFICANT:
        return "drift"
    return "moderate" if (psi or 0.0) > PSI_MODERATE else "stable"


_HOUR_NOTES = {
    "drift": "DRIFT",
    "moderate": f"moderate shift (PSI above {PSI_MODERATE})",
    "stable": "no drift",
}


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
    psi: float | None = None
    chi_square: float | None = None
    degrees_of_freedom: int | None = None
    p_value: float | None = None
    hours: list[HourDrift] = field(default_factory=list)
    mean_top_score: float | None = None
    input_psi: float | None = None
    input_mean: float | None = None
    input_records: int = 0
    baseline_input_mean: float | None = None

    @property
    def enough(self) -> bool:
        return self.total >= MIN_RECORDS

    @property
    def drifted(self) -> bool:
        """A verdict only on `MIN_RECORDS` or more: TVD above its threshold or PSI above
        the significant shift's."""
        if not self.enough or self.tvd is None:
            return False
        return shift(self.psi, self.tvd) == "drift"


def class_key(label: object) -> int | None:
    """A record's `prediction` as a class: its number, or None for a row without one (its
    scores held a NaN: `service.classification.row_classes`), however the engine read it
    (an int, a string from Athena, a JSON null)."""
    return None if label is None else int(label)


def class_order(labels: Iterable[int | None]) -> list[int | None]:
    """Classes in order, "no class" (None) last."""
    return sorted(set(labels), key=lambda label: (label is None, label or 0))


def class_name(label: int | None) -> str:
    """How the report and the chart write a class: its number, or `none`."""
    return "none" if label is None else str(label)


def distances(observed: Counter, expected: dict[int, float]) -> tuple[float, float]:
    """(TVD, PSI) of the class counts `observed` against the shares `expected`. Records
    without a class (None) are a bin of their own, which the test set never holds."""
    total = sum(observed.values())
    every = class_order(set(expected) | set(observed))
    p = np.array([observed.get(c, 0) / total for c in every])
    q = np.array([expected.get(c, 0.0) for c in every])
    return float(0.5 * np.abs(p - q).sum()), psi(p, q)


def psi(p: np.ndarray, q: np.ndarray) -> float:
    """Population stability index of shares `p` (observed) against `q` (expected), each
    summing to 1 over the same bins; empty bins count as PSI_FLOOR."""
    p, q = np.maximum(p, PSI_FLOOR), np.maximum(q, PSI_FLOOR)
    return float(((p - q) * np.log(p / q)).sum())


def top_probabilities(scores: np.ndarray) -> np.ndarray:
    """[n, classes] scores -> [n] top-class probabilities: a row's own maximum when it
    already is a distribution (non-negative, summing to 1 within 1e-3), else softmax's."""
    scores = scores.astype(np.float64, copy=False)
    top = scores.max(axis=1)
    softmax_top = 1.0 / np.exp(scores - top[:, None]).sum(axis=1)
    distribution = (scores.min(axis=1) >= 0) & (np.abs(scores.sum(axis=1) - 1.0) <= 1e-3)
    return np.where(distribution, top, softmax_top)


@dataclass
class Aggregates:
    """What the statistics need from the records, however they were read (Python over
    decoded records, an embedded engine, Athena): per hour (`YYYY-MM-DD HH:00`) the
    class counts, the sum and count of top-class probabilities and the records' mean
    input values; per model the count; the first and last time; latency percentiles."""

    classes: dict[str, Counter] = field(default_factory=dict)
    top: dict[str, tuple[float, int]] = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    models: Counter = field(default_factory=Counter)
    first: str | None = None
    last: str | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)


def hour_label(moment: str) -> str:
    """`2025-03-01T12:34:56.789Z` -> `2025-03-01 12:00`."""
    return moment[:13].replace("T", " ") + ":00"


def aggregate(records: Iterable[dict]) -> Aggregates:
    """The aggregates of decoded records (one hour's scores in memory at a time)."""
    result = Aggregates()
    latencies: list[float] = []
    inputs: dict[str, list[float]] = {}
    current: str | None = None
    scores: list = []
    for record in records:
        moment = record.get("time", "")
        hour = hour_label(moment)
        if hour != current:
            _add_top(result, current, scores)
            current, scores = hour, []
        result.classes.setdefault(hour, Counter())[class_key(record["prediction"])] += 1
        if "scores" in record:
            scores.append(record["scores"])
        if "inputs" in record:
            inputs.setdefault(hour, []).append(float(np.mean(record["inputs"])))
        model = record.get("model", {})
        result.models[f"{model.get('name')} {model.get('version')}"] += 1
        result.first = min(result.first or moment, moment)
        result.last = max(result.last or moment, moment)
        if record.get("row", 0) == 0 and "latency_ms" in record:  # once per request
            latencies.append(float(record["latency_ms"]))
    _add_top(result, current, scores)
    result.inputs = {hour: np.asarray(values) for hour, values in inputs.items()}
    if latencies:
        values = np.percentile(latencies, [50, 90, 99])
        result.latency_ms = {
            "p50": float(values[0]),
            "p90": float(values[1]),
            "p99": float(values[2]),
            "max": max(latencies),
        }
    return result


def _add_top(result: Aggregates, hour: str | None, scores: list) -> None:
    """The hour's top-class probabilities, over the records whose scores are all numbers
    (a NaN or an infinity is written null, and leaves no probability), as every engine
    counts them."""
    scores = [row for row in scores if None not in row]
    if hour is None or not scores:
        return
    try:
        top = top_probabilities(np.asarray(scores, dtype=np.float64))
    except ValueError:  # rows of different lengths: models with different outputs
        top = np.concatenate([top_probabilities(np.asarray([row])) for row in scores])
    total, count = result.top.get(hour, (0.0, 0))
    result.top[hour] = (total + float(top.sum()), count + len(top))


def summarise(
    records: Iterable[dict],
    env: str,
    baseline_labels: np.ndarray | None = None,
    baseline_inputs: Callable[[], np.ndarray] | None = None,
) -> Summary:
    """`summary(aggregate(records), ...)`: the statistics of decoded records."""
    return summary(aggregate(records), env, baseline_labels, baseline_inputs)


def summary(
    aggregates: Aggregates,
    env: str,
    baseline_labels: np.ndarray | None = None,
    baseline_inputs: Callable[[], np.ndarray] | None = None,
) -> Summary:
    """Counts per class, hour and model; request latency percentiles; drift against the
    test set: `baseline_labels` ([N] ints) for the classes, `baseline_inputs()` ([N]
    floats, each test image's mean input value; called only when records carry inputs)."""
    result = Summary(env)
    for hour, counts in aggregates.classes.items():
        result.per_class.update(counts)
        result.per_hour[hour] = sum(counts.values())
    result.total = sum(result.per_hour.values())
    result.per_model = aggregates.models
    result.first, result.last = aggregates.first, aggregates.last
    result.latency_ms = aggregates.latency_ms
    if baseline_labels is not None and result.total:
        _compare(result, baseline_labels)
    _per_hour(result, aggregates, baseline_inputs)
    return result


def _per_hour(
    summary: Summary, hours: Aggregates, baseline_inputs: Callable[[], np.ndarray] | None
) -> None:
    captured = np.concatenate(list(hours.inputs.values())) if hours.inputs else np.empty(0)
    if captured.size:
        summary.input_mean = float(captured.mean())
        summary.input_records = captured.size
    if captured.size and baseline_inputs is not None:
        reference = np.asarray(baseline_inputs(), dtype=np.float64)
        summary.baseline_input_mean = float(reference.mean())
        edges = np.unique(np.quantile(reference, np.linspace(0, 1, 11)[1:-1]))
        summary.input_psi = psi(_shares(captured, edges), _shares(reference, edges))
    top_total = top_count = 0.0
    for hour in sorted(summary.per_hour):
        entry = HourDrift(hour, summary.per_hour[hour])
        if summary.baseline is not None:
            entry.tvd, entry.psi = distances(hours.classes[hour], summary.baseline)
        if hour in hours.top:
            total, count = hours.top[hour]
            entry.mean_top_score = total / count
            top_total, top_count = top_total + total, top_count + count
        if hour in hours.inputs and hours.inputs[hour].size:
            entry.mean_input = float(hours.inputs[hour].mean())
        summary.hours.append(entry)
    if top_count:
        summary.mean_top_score = top_total / top_count


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def _compare(summary: Summary, labels: np.ndarray) -> None:
    classes, counts = np.unique(labels, return_counts=True)
    expected = {int(c): int(n) / len(labels) for c, n in zip(classes, counts, strict=True)}
    summary.baseline = expected
    every = class_order(set(expected) | set(summary.per_class))
    summary.tvd, summary.psi = distances(summary.per_class, expected)
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
    for label in class_order(set(summary.per_class) | set(summary.baseline or {})):
        count = summary.per_class.get(label, 0)
        share = count / summary.total if summary.total else 0.0
        row = f"{class_name(label):>5}  {count:>8}  {share:>7.1%}"
        if summary.baseline is not None:
            expected = summary.baseline.get(label, 0.0)
            row += f"  {expected:>8.1%}  {share - expected:>+7.1%}"
        lines.append(row)
    if summary.tvd is not None:
        lines += ["", drift_verdict(summary)]
        lines.append(
            f"total variation distance to the test set: {summary.tvd:.3f} "
            f"(flagged above {TVD_THRESHOLD}); PSI {summary.psi:.3f} (below {PSI_MODERATE} "
            f"stable, above {PSI_SIGNIFICANT} drift)"
        )
        lines.append(
            f"chi-square: {summary.chi_square:.1f} with {summary.degrees_of_freedom} degrees of "
            f"freedom, p = {summary.p_value:.3g} (with many records any difference is "
            "significant: read the effect sizes above)"
        )
    if summary.mean_top_score is not None:
        lines.append(f"mean top-class probability: {summary.mean_top_score:.3f}")
    if summary.input_mean is not None:
        line = f"mean input value: {summary.input_mean:.2f}"
        if summary.input_psi is not None:
            line += (
                f" (test set {summary.baseline_input_mean:.2f}); PSI over the test set's "
                f"deciles {summary.input_psi:.3f}: {_input_verdict(summary)}"
            )
        lines.append(line)
    lines += [
        "",
        f"{'hour (UTC)':<16}  {'count':>8}  {'TVD':>6}  {'PSI':>6}  {'top p':>6}  note",
    ]
    for entry in reversed(summary.hours):
        lines.append(
            f"{entry.hour:<16}  {entry.records:>8}  {_figure(entry.tvd):>6}  "
            f"{_figure(entry.psi):>6}  {_figure(entry.mean_top_score):>6}  {entry.note}"
        )
    return "\n".join(lines)


def drift_verdict(summary: Summary) -> str:
    if not summary.enough:
        return (
            f"no verdict: {summary.total} records, under the {MIN_RECORDS} a verdict needs "
            "(sampling alone would move the distances)"
        )
    if summary.drifted:
        return "DRIFT: the predicted classes moved away from the test set"
    if shift(summary.psi) == "moderate":
        return "a moderate shift of the predicted classes (PSI above 0.1): watch it"
    return "no drift: the predicted classes match the test set's"


def _input_verdict(summary: Summary) -> str:
    if summary.input_records < MIN_RECORDS:
        return f"no verdict ({summary.input_records} records with inputs, under {MIN_RECORDS})"
    return {
        "drift": "DRIFT: the inputs moved away from the test set's",
        "moderate": "a moderate shift of the inputs: watch it",
        "stable": "the inputs match the test set's",
    }[shift(summary.input_psi)]


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def test_set_labels() -> np.ndarray:
    """The labels of the reference test set (model.toml), verified by sha256."""
    reference = load_reference(environ=os.environ)
    path = fetch_artifact(reference.test_labels)
    return read_idx_labels(path) if reference.test_format == "idx" else read_csv_labels(path)


def test_set_input_means() -> np.ndarray:
    """Each test image's mean input value ([N] floats), pixels scaled as the model takes
    them (`input_scale` of model.toml)."""
    reference = load_reference(environ=os.environ)
    path = fetch_artifact(reference.test_images)
    images = read_idx_images(path) if reference.test_format == "idx" else read_csv_images(path)
    return images.reshape(len(images), -1).mean(axis=1) * reference.input_scale
