"""The report's chart: the class distribution against the test set's, and over time the
count, the classes' TVD and PSI, and the mean top-class probability per hour."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.predictions.statistics import (
    MIN_RECORDS,
    PSI_SIGNIFICANT,
    TVD_THRESHOLD,
    Summary,
    class_name,
    class_order,
)


def plot(summary: Summary, path: Path) -> Path:
    """A PNG of four panels: classes, predictions per hour, drift per hour (TVD and PSI
    with their thresholds; hours under MIN_RECORDS records hollow), confidence per hour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(13, 8))
    classes_axis, hours_axis, drift_axis, confidence_axis = axes.flat
    labels = class_order(set(summary.per_class) | set(summary.baseline or {}))
    positions = np.arange(len(labels))
    shares = [summary.per_class.get(c, 0) / max(summary.total, 1) for c in labels]
    classes_axis.bar(positions - 0.2, shares, width=0.4, label=f"{summary.env} predictions")
    if summary.baseline is not None:
        expected = [summary.baseline.get(c, 0.0) for c in labels]
        classes_axis.bar(positions + 0.2, expected, width=0.4, label="test set labels")
        classes_axis.set_title(f"Classes (TVD {summary.tvd:.3f}, PSI {summary.psi:.3f})")
    else:
        classes_axis.set_title("Classes")
    classes_axis.set_xticks(positions, [class_name(c) for c in labels])
    classes_axis.set_ylabel("share")
    classes_axis.legend()

    hours = summary.hours
    x = np.arange(len(hours))
    names = [entry.hour for entry in hours]
    hours_axis.bar(x, [entry.records for entry in hours])
    hours_axis.axhline(MIN_RECORDS, color="grey", linestyle=":", label="minimum for a verdict")
    hours_axis.set_title("Predictions per hour (UTC)")
    hours_axis.legend()

    enough = np.array([entry.enough for entry in hours], dtype=bool)
    for field, colour, threshold in (
        ("tvd", "tab:blue", TVD_THRESHOLD),
        ("psi", "tab:orange", PSI_SIGNIFICANT),
    ):
        values = np.array(
            [np.nan if getattr(e, field) is None else getattr(e, field) for e in hours]
        )
        drift_axis.plot(x, values, color=colour, alpha=0.4)
        drift_axis.scatter(x[enough], values[enough], color=colour, label=field.upper())
        drift_axis.scatter(x[~enough], values[~enough], facecolors="none", edgecolors=colour)
        drift_axis.axhline(threshold, color=colour, linestyle="--", linewidth=1)
    drift_axis.set_title("Class drift per hour against the test set (dashed: thresholds)")
    drift_axis.legend()

    top = [np.nan if e.mean_top_score is None else e.mean_top_score for e in hours]
    confidence_axis.plot(x, top, marker="o", color="tab:green")
    confidence_axis.set_ylim(0, 1.05)
    confidence_axis.set_title("Mean top-class probability per hour")
    for axis in (hours_axis, drift_axis, confidence_axis):
        step = max(1, len(hours) // 24)
        axis.set_xticks(x[::step], names[::step], rotation=45, ha="right", fontsize=7)
    figure.suptitle(f"Prediction capture: {summary.env}, {summary.total} records")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
