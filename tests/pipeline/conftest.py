"""The service image, built once for every image test of the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pipeline.containers import Built, build_test_image, podman


@pytest.fixture(scope="session")
def built() -> Iterator[Built]:
    built = build_test_image()
    yield built
    # Each commit's image has its own 240 MB venv layer: do not pile them up.
    podman("rmi", built.ref, check=False)
