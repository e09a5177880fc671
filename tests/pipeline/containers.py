"""podman for the image tests: the tools check, the command, and the image built once.

Needs podman, the base image and docker-registry (`.ci/setup.sh` makes all
three). Without them the image tests skip on a workstation and fail in CI (CI=true).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline import image
from pipeline.reference import load_reference

BASE_IMAGE = os.environ.get("BASE_IMAGE", "localhost/python-base:3.11")
# One name per test session: two checkouts of one commit testing on the same machine
# must not remove each other's image (the tag is the commit).
TEST_REPO = f"localhost/onnx-ship-test-{uuid.uuid4().hex[:8]}"
SETUP_HINT = "run .ci/setup.sh (podman, the local base image, docker-registry)"
# The loopback registry .ci/setup.sh starts (it plays ECR's registry in the deploy tests).
REGISTRY = f"127.0.0.1:{os.environ.get('REGISTRY_PORT', '5000')}"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def require(condition: bool, problem: str, hint: str = SETUP_HINT) -> None:
    """Missing tooling skips on a workstation and fails in CI, where it must be there."""
    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{problem}: {hint}")
    pytest.skip(f"{problem}: {hint}")


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, timeout=timeout
    )


def run_detached(name: str, *arguments: str) -> None:
    """`podman run --detach --name <name> --network host <arguments>`: the image tests'
    containers share the host's network (rootless podman publishes a port only through a
    TAP device, which not every machine lets an unprivileged user open)."""
    podman("run", "--detach", "--name", name, "--network", "host", *arguments)


def dangling_images() -> set[str]:
    """The IDs of podman's untagged images (a multi-stage build leaves its first stage so)."""
    return set(
        podman("images", "--quiet", "--no-trunc", "--filter", "dangling=true").stdout.split()
    )


def remove_dangling_since(before: set[str]) -> None:
    """Remove the untagged images made since `before` (dangling_images()): each build of a
    commit leaves a stage of about 390 MB, which would otherwise pile up run after run.
    Without --force: a stage another checkout's build of the same commit is using at that
    moment (the same image, as its cache) stays, podman refusing an image in use by a
    container; the next run's clean-up does not count it as its own."""
    made = dangling_images() - before
    if made:
        podman("rmi", *made, check=False)


def remove_names(repositories: set[str], tags: set[str]) -> None:
    """Take off every name podman's images carry in `repositories` (their tags, and the
    digests podman records there for a push or a pull by digest), on each image tagged one
    of `tags` in one of them: an image left without a name is deleted, one that still
    carries another stays.

    Never by ID: a build of one commit gives the same image ID in every checkout (the
    build is reproducible), so `podman rmi --force <id>` would also delete the image
    another checkout of that commit is testing on this machine, under its own name
    (TEST_REPO).
    """
    listed = podman("images", "--no-trunc", "--format", "{{.ID}} {{.Repository}} {{.Tag}}")
    tagged = sorted(
        {
            image_id
            for image_id, repository, tag in (
                line.split(" ") for line in listed.stdout.splitlines()
            )
            if repository in repositories and tag in tags
        }
    )
    # Tags first, then the digest names left (a pull by digest): podman also lists a digest
    # under every repository the image is tagged in, which goes with the last tag there,
    # and `podman rmi` of such a digest once its tag is gone removes the image itself, as
    # by ID.
    for kind in ("RepoTags", "RepoDigests"):
        names = [name for image_id in tagged for name in _names(image_id, kind, repositories)]
        if names:
            podman("rmi", *names, check=False)


def _names(image_id: str, kind: str, repositories: set[str]) -> list[str]:
    """The image's `kind` names (RepoTags or RepoDigests) in `repositories`; none when
    podman's store no longer holds it."""
    found = podman("image", "inspect", image_id, check=False)
    if found.returncode != 0:
        return []
    (inspected,) = json.loads(found.stdout)
    return [name for name in inspected.get(kind) or () if _repository_of(name) in repositories]


def _repository_of(name: str) -> str:
    """`registry:5000/repo:tag` or `registry:5000/repo@sha256:...` -> `registry:5000/repo`."""
    if "@" in name:
        return name.partition("@")[0]
    repository, _, tag = name.rpartition(":")
    return repository if repository and "/" not in tag else name


def require_registry(address: str) -> None:
    """A registry answers at `address` (http://<address>/v2/), as .ci/setup.sh starts one."""
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=2):
            pass
    except (urllib.error.URLError, OSError):
        require(
            False,
            f"no registry answers at http://{address}/v2/",
            "run .ci/setup.sh, which starts one there and lets podman push to it over HTTP",
        )


def require_podman() -> None:
    require(shutil.which("podman") is not None, "podman is not installed")
    require(
        podman("image", "exists", BASE_IMAGE, check=False).returncode == 0,
        f"the base image {BASE_IMAGE} does not exist",
    )


def podman_cli() -> image.ContainerCli:
    """This machine's podman, as the pipeline's image code takes a container CLI."""
    require(shutil.which("podman") is not None, "podman is not installed")
    return image.ContainerCli("podman", shutil.which("podman") or "podman")


def registry_manifest(registry: str, repository: str, tag: str) -> tuple[str, bytes] | None:
    """`repository:tag`'s digest and Docker v2 manifest in the loopback `registry`, or None
    when the registry does not hold it (its API's 404)."""
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}", headers={"Accept": MANIFEST_V2}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.headers["Docker-Content-Digest"], answer.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def delete_from_registry(registry: str, repository: str, tag: str) -> None:
    """Delete `repository:tag`'s manifest from the loopback `registry` (and so every tag of
    that image), if it holds it: the registry's API, `DELETE /v2/<name>/manifests/<digest>`."""
    held = registry_manifest(registry, repository, tag)
    if held is not None:
        url = f"http://{registry}/v2/{repository}/manifests/{held[0]}"
        urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=10)


def registry_takes_ecr_tags(registry: str, repository: str, ecr: Any) -> list[str]:
    """Put in the loopback `registry` every tag that moto's ECR repository of the same name
    holds and the registry lacks, with the same manifest (so the same digest): the tags
    ECR's API added without a push (PutImage of a manifest already there: "Retagging an
    image in Amazon ECR"), which ECR's registry serves at once, being the same store. The
    other half of `_MIRROR`. `ecr`: a boto3 ECR client of moto; returns the tags put."""
    put = []
    for page in ecr.get_paginator("describe_images").paginate(repositoryName=repository):
        for detail in page["imageDetails"]:
            for tag in detail.get("imageTags", []):
                if registry_manifest(registry, repository, tag) is not None:
                    continue
                (found,) = ecr.batch_get_image(
                    repositoryName=repository,
                    imageIds=[{"imageTag": tag}],
                    acceptedMediaTypes=[MANIFEST_V2],
                )["images"]
                request = urllib.request.Request(
                    f"http://{registry}/v2/{repository}/manifests/{tag}",
                    data=found["imageManifest"].encode(),
                    headers={"Content-Type": found["imageManifestMediaType"]},
                    method="PUT",
                )
                with urllib.request.urlopen(request, timeout=10) as answer:
                    digest = answer.headers["Docker-Content-Digest"]
                assert digest == found["imageId"]["imageDigest"], (tag, digest, found["imageId"])
                put.append(tag)
    return put


@dataclass(frozen=True)
class Built:
    ref: str
    sha: str
    model_sha256: str
    cli: image.ContainerCli


def build_test_image() -> Built:
    """This checkout's image, built with podman on BASE_IMAGE as `nox -s build` builds it."""
    require_podman()
    cli = podman_cli()
    sha = image.git_sha()
    model_sha256 = load_reference().model.sha256
    assert model_sha256 is not None
    started = time.monotonic()
    ref = image.build(
        TEST_REPO, sha, model_sha256, BASE_IMAGE, ca_bundle=image.default_ca_bundle(), cli=cli
    )
    size = int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout)
    print(f"\nimage {ref}: {size / 1e6:.0f} MB, built in {time.monotonic() - started:.0f}s")
    return Built(ref, sha, model_sha256, cli)


# The loopback registry plays ECR's registry and moto plays ECR's API: after every push
# the wrapper below stores the pushed manifest in moto's repository of the same name
# under the same tag and digest, so the ECR lookups the pipeline makes after a push (and
# before the next one) answer as ECR, where both are one service, answers them.
_MIRROR = """\
import sys, urllib.request

import boto3

reference = sys.argv[1]
registry, _, path = reference.partition("/")
repository, _, tag = path.rpartition(":")
request = urllib.request.Request(
    f"http://{registry}/v2/{repository}/manifests/{tag}", headers={"Accept": sys.argv[2]}
)
with urllib.request.urlopen(request, timeout=10) as answer:
    digest, body = answer.headers["Docker-Content-Digest"], answer.read()
    media_type = answer.headers["Content-Type"]
boto3.client("ecr").put_image(
    repositoryName=repository,
    imageManifest=body.decode(),
    imageManifestMediaType=media_type,
    imageTag=tag,
    imageDigest=digest,
)
"""


def ecr_podman(directory: Path, log: Path | None = None) -> image.ContainerCli:
    """podman as a deploy on AWS sees it: every push to the loopback registry also lands in
    moto's ECR repository of that name (same tag, same digest, as `_MIRROR` says why), so
    here ECR always agrees with what podman pushed, at once; a repository that answers
    with another digest, or late, is tests/pipeline/test_image.py's scripted ECR;
    with `log`, `<pull|push> <reference>` is appended to it before each of those commands
    (the reference is the command's last argument)."""
    require(shutil.which("podman") is not None, "podman is not installed")
    mirror = directory / "mirror_push.py"
    mirror.write_text(_MIRROR)
    wrapper = directory / "podman"
    logging = f"  printf '%s %s\\n' \"$1\" \"$last\" >> '{log}'\n" if log else ""
    wrapper.write_text(
        "#!/bin/sh\n"
        "for last; do :; done\n"
        'case "$1" in pull|push)\n'
        f"{logging}"
        "  ;;\n"
        "esac\n"
        'if [ "$1" = push ]; then\n'
        f'  {shutil.which("podman")} "$@" || exit $?\n'
        f"  exec {sys.executable} {mirror} \"$last\" '{MANIFEST_V2}'\n"
        "fi\n"
        f'exec {shutil.which("podman")} "$@"\n'
    )
    wrapper.chmod(0o755)
    if log:
        log.touch()
    return image.ContainerCli("podman", str(wrapper))
