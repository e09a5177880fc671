"""The gate's report: one JSON document and the same facts as Markdown.

`report.json` is for machines (the deploy step takes its `record` object for
the deployment record); `report.md` is for people, and is appended to the
GitHub Actions job summary when `GITHUB_STEP_SUMMARY` is set.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.gate import GateResult

JSON_NAME = "report.json"
MARKDOWN_NAME = "report.md"


def to_dict(result: GateResult) -> dict[str, Any]:
    evaluation = result.evaluation
    return {
        "passed": result.passed,
        "reasons": result.reasons,
        "model": {"name": result.model_name, "sha256": result.sha256s["model"]},
        "test_data": {
            "images_sha256": result.sha256s["test_images"],
            "labels_sha256": result.sha256s["test_labels"],
            "images": evaluation.images if evaluation else None,
        },
        "reference": result.reference_source,
        "input_scale": result.input_scale,
        "thresholds": asdict(result.thresholds),
        "checks": [asdict(check) for check in result.checks],
        "accuracy": evaluation.accuracy if evaluation else None,
        "without_class": evaluation.without_class if evaluation else None,
        "per_class": evaluation.per_class if evaluation else None,
        "confusion_matrix": evaluation.confusion.tolist() if evaluation else None,
        "latency_ms": (
            {**evaluation.latency_ms, "runs": evaluation.latency_runs} if evaluation else None
        ),
        "inference_seconds": evaluation.inference_seconds if evaluation else None,
        "environment": result.environment,
        "champion": asdict(result.champion) if result.champion else None,
        "duration_seconds": result.duration_seconds,
        "notes": list(result.notes),
        "record": result.record(),
    }


def to_markdown(result: GateResult) -> str:
    evaluation = result.evaluation
    verdict = "passed" if result.passed else "FAILED"
    lines = [
        f"## Model gate {verdict}: {result.model_name}",
        "",
        f"Model sha256 `{result.sha256s['model']}`, from {result.reference_source}.",
        "",
        "| check | result | detail |",
        "| --- | --- | --- |",
        *(f"| {c.name} | {c.status} | {c.detail} |" for c in result.checks),
        "",
    ]
    if evaluation is not None:
        latency = evaluation.latency_ms
        lines += [
            f"Top-1 accuracy **{evaluation.accuracy:.2%}** on {evaluation.images} images "
            f"(input scale {result.input_scale:g}); whole-set inference "
            f"{evaluation.inference_seconds:.2f} s; gate {result.duration_seconds:.1f} s."
            + (
                f" {evaluation.without_class} images had no class (the model's scores held "
                "a NaN): counted wrong, in no column of the confusion matrix."
                if evaluation.without_class
                else ""
            ),
            "",
            f"Single-image latency over {evaluation.latency_runs} runs: "
            f"p50 {latency['p50']:.3f} ms, p90 {latency['p90']:.3f} ms, "
            f"p99 {latency['p99']:.3f} ms, max {latency['max']:.3f} ms.",
            "",
            *_per_class_table(evaluation.per_class),
            "",
            *_confusion_table(evaluation.confusion.tolist()),
            "",
        ]
    champion = result.champion
    if champion is not None:
        lines += [
            f"Champion: {champion.environment} release `{champion.release_id}`, model "
            f"`{champion.model_sha256}`, accuracy {champion.accuracy:.2%}.",
            "",
        ]
    lines += [
        f"Thresholds: {result.thresholds.describe()}.",
        "",
        f"Test data: images `{result.sha256s['test_images']}`, labels "
        f"`{result.sha256s['test_labels']}`.",
        "",
        *(f"Note: {note}" for note in result.notes),
    ]
    return "\n".join(lines).rstrip() + "\n"


def write_report(result: GateResult, report_dir: Path) -> tuple[Path, Path]:
    """Write `report.json` and `report.md` into `report_dir`; return their paths."""
    report_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = report_dir / JSON_NAME, report_dir / MARKDOWN_NAME
    json_path.write_text(json.dumps(to_dict(result), indent=2) + "\n")
    markdown_path.write_text(to_markdown(result))
    return json_path, markdown_path


def append_step_summary(result: GateResult) -> Path | None:
    """Append the Markdown to the GitHub Actions job summary, when running there."""
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if not summary:
        return None
    path = Path(summary)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(to_markdown(result) + "\n")
    return path


def record_from_report(json_path: Path) -> dict[str, Any]:
    """The `gate` object for a deployment record, from a written `report.json`."""
    return json.loads(json_path.read_text())["record"]


def _per_class_table(per_class: list[dict[str, float | int]]) -> list[str]:
    return [
        "| class | precision | recall | images |",
        "| ---: | ---: | ---: | ---: |",
        *(
            f"| {row['class']} | {row['precision']:.2%} | {row['recall']:.2%} | {row['support']} |"
            for row in per_class
        ),
    ]


def _confusion_table(confusion: list[list[int]]) -> list[str]:
    classes = range(len(confusion))
    return [
        "Confusion matrix (rows: true class, columns: predicted class):",
        "",
        "| true \\ predicted | " + " | ".join(str(k) for k in classes) + " |",
        "| ---: | " + " | ".join("---:" for _ in classes) + " |",
        *(f"| **{k}** | " + " | ".join(str(n) for n in confusion[k]) + " |" for k in classes),
    ]
