"""Fixtures of the pipeline tests: the service image, built once for every image test of
the session; a real service serving mnist-8, what a release's smoke test calls; and real
MNIST test images to smoke-test it with."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.release import SmokeImages
from tests.pipeline.containers import (
    Built,
    build_test_image,
    dangling_images,
    podman,
    remove_dangling_since,
)
from tests.service.conftest import mnist8_server  # noqa: F401 (a fixture)


@pytest.fixture(scope="session")
def built() -> Iterator[Built]:
    before = dangling_images()
    built = build_test_image()
    yield built
    # Each commit's image has its own 240 MB venv layer, and its build leaves its first
    # stage untagged: do not pile them up.
    podman("rmi", built.ref, check=False)
    remove_dangling_since(before)


@pytest.fixture
def smoke(mnist_test_set) -> SmokeImages:
    """The first six MNIST test images as the service takes them, with their labels."""
    images, labels = mnist_test_set
    return SmokeImages(
        images[:6].reshape(6, 1, 28, 28).astype(np.float32), [int(x) for x in labels[:6]]
    )
