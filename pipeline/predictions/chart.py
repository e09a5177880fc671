"""The report's chart: the class distribution (against the test set's) and the count per hour."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.predictions.statistics import Summary


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
