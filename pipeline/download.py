"""Fetch the model and the test data the reference names, each verified by sha256.

`python -m pipeline download` and the gate call `download`. Files come from
FIXTURES_DIR when it mirrors them, else from their URL (path, file://, s3://,
https://) into a cache keyed by content hash, so a re-run costs nothing. A
file whose bytes do not match its pinned sha256 stops everything with
`ChecksumMismatch`, which names the file and both hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.reference import Reference, fetch_verified


@dataclass(frozen=True)
class Downloaded:
    """Local, verified copies of what a reference names."""

    model_path: Path
    images_path: Path
    labels_path: Path
    sha256s: dict[str, str]  # "model", "test_images", "test_labels" -> sha256 of the bytes


def download(reference: Reference, cache_dir: Path | None = None) -> Downloaded:
    """Fetch and verify the model, then the test images and labels."""
    model_path, model_sha = fetch_verified(reference.model, cache_dir)
    images_path, images_sha = fetch_verified(reference.test_images, cache_dir)
    labels_path, labels_sha = fetch_verified(reference.test_labels, cache_dir)
    return Downloaded(
        model_path=model_path,
        images_path=images_path,
        labels_path=labels_path,
        sha256s={"model": model_sha, "test_images": images_sha, "test_labels": labels_sha},
    )
