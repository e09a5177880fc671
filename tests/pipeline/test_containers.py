"""The image tests' clean-up: it takes off podman's store only what its own run named.

Builds of one commit are the same image in every checkout, so another checkout testing the
same commit on this machine holds the very image a run removes, under a name of its own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pipeline.containers import (
    BASE_IMAGE,
    REGISTRY,
    dangling_images,
    delete_from_registry,
    podman,
    registry_manifest,
    remove_dangling_since,
    remove_names,
    require_podman,
    require_registry,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def image_id(tmp_path: Path) -> Iterator[str]:
    """A small image of its own (the base image and one label), removed after the test
    whatever names it still carries."""
    require_podman()
    label = uuid.uuid4().hex
    (tmp_path / "Containerfile").write_text(f"FROM {BASE_IMAGE}\nLABEL names-test={label}\n")
    built = podman("build", "--quiet", str(tmp_path)).stdout.strip().splitlines()[-1]
    (inspected,) = json.loads(podman("image", "inspect", built).stdout)
    yield inspected["Id"]
    podman("rmi", "--force", inspected["Id"], check=False)


def names_of(image_id: str, kind: str = "RepoTags") -> list[str] | None:
    """The image's tags (or its RepoDigests), or None when podman's store no longer holds
    it."""
    found = podman("image", "inspect", image_id, check=False)
    if found.returncode != 0:
        return None
    (inspected,) = json.loads(found.stdout)
    return sorted(inspected.get(kind) or [])


def test_an_image_another_checkout_also_named_keeps_that_name(image_id):
    run = uuid.uuid4().hex[:8]
    ours, theirs = f"localhost/names-ours-{run}", f"localhost/names-theirs-{run}"
    podman("tag", image_id, f"{ours}:commit", f"{ours}:verified", f"{theirs}:commit")
    remove_names({ours}, {"commit"})
    assert names_of(image_id) == [f"{theirs}:commit"]
    podman("image", "exists", BASE_IMAGE)


def test_an_image_named_only_by_this_run_leaves_the_store_digests_and_all(image_id):
    """A push and a pull by digest name the image in the registry's repository too; with
    every name in this run's repositories taken off, nothing holds the image."""
    require_registry(REGISTRY)
    run = uuid.uuid4().hex[:8]
    local, pushed = f"localhost/names-ours-{run}", f"{REGISTRY}/names-ours-{run}"
    podman("tag", image_id, f"{local}:commit", f"{pushed}:commit")
    try:
        # Docker v2 schema 2, as the deploy pushes (registry_manifest asks for it).
        podman("push", "--tls-verify=false", "--format", "v2s2", f"{pushed}:commit")
        held = registry_manifest(REGISTRY, f"names-ours-{run}", "commit")
        assert held is not None
        podman("pull", "--tls-verify=false", f"{pushed}@{held[0]}")
        assert any("@" in name for name in names_of(image_id, "RepoDigests") or [])
        remove_names({local, pushed}, {"commit"})
        assert names_of(image_id) is None
    finally:
        delete_from_registry(REGISTRY, f"names-ours-{run}", "commit")


def test_images_of_other_tags_and_repositories_are_left_alone(image_id):
    run = uuid.uuid4().hex[:8]
    ours = f"localhost/names-ours-{run}"
    podman("tag", image_id, f"{ours}:other-commit", f"localhost/names-theirs-{run}:commit")
    remove_names({ours}, {"commit"})
    assert names_of(image_id) == sorted(
        [f"{ours}:other-commit", f"localhost/names-theirs-{run}:commit"]
    )


def test_a_build_stage_in_use_by_another_build_stays(tmp_path):
    """The untagged first stage of a two-stage build goes, unless a container (another
    build's, working from it) uses it at that moment."""
    require_podman()
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed: run .ci/setup.sh")
    label = uuid.uuid4().hex
    (tmp_path / "Containerfile").write_text(
        f"FROM {BASE_IMAGE} AS first\nRUN echo {label} > /stage\n"
        f"FROM {BASE_IMAGE}\nCOPY --from=first /stage /stage\nLABEL names-test={label}\n"
    )
    final = f"localhost/names-stages-{label[:8]}:commit"
    before = dangling_images()
    podman("build", "--quiet", "--tag", final, str(tmp_path))
    try:
        # This build's stage: the untagged image whose history runs this test's command
        # (another run may make untagged images meanwhile).
        (stage,) = (
            made
            for made in dangling_images() - before
            if label in podman("image", "history", "--no-trunc", made).stdout
        )
        working = subprocess.run(
            ["buildah", "from", stage], capture_output=True, text=True, check=True
        ).stdout.strip()
        try:
            remove_dangling_since(before)
            assert stage in dangling_images()
        finally:
            subprocess.run(["buildah", "rm", working], capture_output=True, check=False)
        remove_dangling_since(before)
        assert stage not in dangling_images()
    finally:
        podman("rmi", final, check=False)
        remove_dangling_since(before)
