"""The gate as one step: download by reference, gate, write the report, stop on a failure.

`python -m pipeline gate`, `deploy <env>` and `deploy-local` all gate through
`gate_model`. It returns what the later steps need from the gate (the verified
files, the test set decoded once, its images scaled as the model takes them, the
model and the result), so nothing after the gate downloads or decodes again.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import records
from pipeline.datasets import Dataset
from pipeline.download import Downloaded, download
from pipeline.gate import Champion, GateResult, run_gate
from pipeline.reference import Reference
from pipeline.report import append_step_summary, write_report
from service.artifacts import local_path
from service.model import OnnxModel

# Relative to the working directory: nox runs every session from the repository root.
DEFAULT_REPORT_DIR = Path("build") / "gate"
DEPLOYMENTS_URL_ENV = "DEPLOYMENTS_URL"


class GateFailed(Exception):
    """The model did not pass the gate; the message lists the failed checks and the report."""


class NoDeploymentRecords(Exception):
    """A champion comparison was asked for without the deployment records to read it from."""


@dataclass(frozen=True)
class Gated:
    """A model that passed the gate, and what the steps after the gate take from it."""

    reference: Reference
    downloaded: Downloaded
    result: GateResult
    report: Path  # report.json

    @property
    def model(self) -> OnnxModel:
        assert self.result.model is not None  # a passed gate loaded it
        return self.result.model

    @property
    def dataset(self) -> Dataset:
        assert self.result.dataset is not None
        return self.result.dataset

    @property
    def inputs(self) -> np.ndarray:
        """The test images as the model takes them, [N, *item_shape], scaled."""
        assert self.result.inputs is not None
        return self.result.inputs


def read_champion(deployments_url: str, environment: str) -> Champion | None:
    """The champion from `<deployments_url>/<environment>/latest.json`, if any.

    Only a record whose outcome is `succeeded` is a champion. Raises RecordError when
    the record is malformed or its store cannot be read.
    """
    record = records.read_latest(records.environment_url(deployments_url, environment))
    if record is None or record["outcome"] != "succeeded":
        return None
    return Champion.from_record(environment, record)


def _records_root(deployments_url: str) -> None:
    """Raise NoDeploymentRecords when `deployments_url` names a local directory that does
    not exist: `bucket/deployments` without `s3://` would otherwise read as "nothing was
    ever deployed" and skip the champion comparison. (An environment's own directory
    under it may be missing: nothing was deployed there yet.)"""
    path = local_path(deployments_url)
    if path is not None and not path.is_dir():
        raise NoDeploymentRecords(
            f"{DEPLOYMENTS_URL_ENV} / --deployments-url {deployments_url!r} is not an existing "
            "directory: give the deployment records' location, s3://<bucket>/deployments "
            "(the s3:// included) or a local directory"
        )


def _writable(directory: Path) -> None:
    """Raise OSError naming the path when `directory` could not be made or written (a
    file in its way, no write permission), before the test set runs rather than after;
    nothing is created."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(existing))


def gate_model(
    reference: Reference,
    *,
    environment: str | None = None,
    deployments_url: str | None = None,
    report_dir: Path = DEFAULT_REPORT_DIR,
    cache_dir: Path | None = None,
    say: Callable[[str], None] = print,
) -> Gated:
    """Download what `reference` names, gate it, write the report; the Gated model.

    With `environment`, the model is also compared with the champion recorded under
    `<deployments_url>/<environment>/latest.json`. Writes `report.json` and `report.md`
    to `report_dir` and appends the Markdown to `$GITHUB_STEP_SUMMARY` when set; `say`
    narrates one line per check, the report's paths and, when it passed,
    `gate passed: <name> (<model sha256>)`.

    Raises NoDeploymentRecords (an environment without `deployments_url`), ArtifactError
    (a download, or a sha256 mismatch: before anything runs), DatasetError, RecordError,
    and GateFailed when a check fails (after the report is written).
    """
    if environment and not deployments_url:
        raise NoDeploymentRecords(
            f"comparing with {environment}'s champion needs its deployment records: set "
            f"{DEPLOYMENTS_URL_ENV}=s3://<bucket>/deployments or pass --deployments-url"
        )
    if environment:
        _records_root(deployments_url)
    _writable(report_dir)
    downloaded = download(reference, cache_dir)
    champion = read_champion(deployments_url, environment) if environment else None
    result = run_gate(reference, downloaded, champion=champion, environment=environment)
    json_path, markdown_path = write_report(result, report_dir)
    append_step_summary(result)
    for check in result.checks:
        say(f"{check.status.upper():<7} {check.name}: {check.detail}")
    say(f"report: {json_path} and {markdown_path} ({result.duration_seconds:.1f} s)")
    if not result.passed:
        raise GateFailed("gate failed: " + "; ".join(result.reasons) + f" (report: {json_path})")
    say(f"gate passed: {reference.name} ({downloaded.sha256s['model']})")
    return Gated(reference, downloaded, result, json_path)
