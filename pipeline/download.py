"""Fetch the model and the test data the reference names, each verified by sha256.

`nox -s download` calls `main`; the gate calls `download`. Files come from
FIXTURES_DIR when it mirrors them, else from their URL (path, file://, s3://,
https://) into a cache keyed by content hash, so a re-run costs nothing. A
file whose bytes do not match its pinned sha256 stops everything with
`ChecksumMismatch`, which names the file and both hashes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.reference import (
    DEFAULT_REFERENCE,
    InvalidReference,
    Reference,
    fetch_verified,
    load_reference,
)
from service.artifacts import ArtifactError


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The download's command-line options (also used by `python -m pipeline download`)."""
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--cache-dir", type=Path, default=None)


def run(args: argparse.Namespace) -> int:
    """Fetch the model and test data by reference, verifying every sha256."""
    try:
        reference = load_reference(args.reference, environ=os.environ)
        downloaded = download(reference, args.cache_dir)
    except (InvalidReference, ArtifactError) as exc:
        print(f"download failed: {exc}", file=sys.stderr)
        return 1
    for role, artifact, path in (
        ("model", reference.model, downloaded.model_path),
        ("test_images", reference.test_images, downloaded.images_path),
        ("test_labels", reference.test_labels, downloaded.labels_path),
    ):
        pinned = "" if artifact.sha256 else "  (not pinned: no sha256 given)"
        print(f"{role:<12} {downloaded.sha256s[role]}  {path}{pinned}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.download [--reference model.toml] [--cache-dir DIR]`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.download", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
