"""Registries: push the built image to ECR (or the loopback test registry), pull, log in.

`Ecr` is where the login token and the tag lookups come from (boto3's ECR client);
the repository URL is where the image goes. They are separate, so the same code
pushes to a loopback registry in tests with a token from a moto server. Tags are
immutable: a tag that exists already is kept when it holds this very image and
refused otherwise, so a tag always names one build.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from pipeline.image import ContainerCli, ImageError, find_cli, run_cli, say

PUSH_TIMEOUT_SECONDS = 20 * 60
# The waits before each further lookup of a pushed tag, before it counts as missing (30 s).
PUSH_LOOKUP_WAITS_SECONDS = (1.0, 2.0, 4.0, 8.0, 15.0)
# Registries on the loopback interface are the test registry: plain HTTP.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# A registry's "not there" answers, as docker and podman print them: the OCI Distribution
# Spec's MANIFEST_UNKNOWN and NAME_UNKNOWN error codes ("Error codes"); ECR and
# docker-registry answer a missing tag or repository with them.
_ABSENT = ("manifest unknown", "name unknown")
# ECR's answers for "no image has this tag" in batch_get_image failures.
_NOT_FOUND_CODES = ("ImageNotFound", "ImageTagDoesNotExist")


@dataclass(frozen=True)
class Credentials:
    """A registry login: what `<cli> login --username U --password-stdin` takes."""

    username: str
    password: str


@dataclass(frozen=True)
class RemoteImage:
    """What a repository already holds under a tag (or a digest)."""

    digest: str  # the manifest digest, "sha256:..."
    config_digest: str | None  # the image ID the manifest points to, when readable
    manifest: str = ""  # the manifest as the repository holds it, byte for byte
    media_type: str = ""  # its media type (BatchGetImage's imageManifestMediaType)


class Ecr:
    """ECR through boto3: the login token, the lookup of an existing tag, and the removal
    of a tag.

    `client` is a boto3 ECR client in the repository's region
    (`Environment.client("ecr")`): a login token is only good for its own region's
    registry.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def credentials(self) -> Credentials:
        """Decode `get_authorization_token`'s base64 `AWS:<password>` (valid for 12 hours)."""
        data = self._client.get_authorization_token()["authorizationData"]
        if not data:
            raise ImageError("ECR returned no authorization data: check the AWS credentials")
        decoded = base64.b64decode(data[0]["authorizationToken"]).decode()
        username, separator, password = decoded.partition(":")
        if not separator or not password:
            raise ImageError("ECR's authorization token is not 'user:password' base64")
        return Credentials(username, password)

    def existing(self, repository_name: str, tag: str) -> RemoteImage | None:
        """The image the repository holds under `tag`, or None when the tag is free."""
        return self._lookup(repository_name, {"imageTag": tag}, f"{repository_name}:{tag}")

    def holds(self, repository_name: str, digest: str) -> bool:
        """Whether the repository still holds the image `digest` ("sha256:..."): its
        lifecycle policy may have expired it (ECR answers a missing one with the failure
        code ImageNotFound: ECR API reference, BatchGetImage and ImageFailure)."""
        found = self._lookup(
            repository_name, {"imageDigest": digest}, f"{repository_name}@{digest}"
        )
        return found is not None

    def retag(self, repository_name: str, digest: str, tag: str) -> None:
        """Give the image `digest` of `repository_name` the tag `tag` too, without pulling
        or pushing it: its manifest, read as the repository holds it (BatchGetImage, every
        manifest type accepted, so ECR converts none), is put back under `tag` (PutImage
        with the digest, which ECR checks the manifest against), so the tag names that very
        digest ("Retagging an image in Amazon ECR", ECR user guide; ECR API reference,
        PutImage). Raises ImageError when the repository no longer holds the image, and
        botocore's ClientError when ECR refuses the tag (ImageTagAlreadyExistsException:
        tags are immutable)."""
        found = self._lookup(
            repository_name, {"imageDigest": digest}, f"{repository_name}@{digest}"
        )
        if found is None:
            raise ImageError(
                f"{repository_name}@{digest} is not in the repository any more (its lifecycle "
                f"policy may have expired it): cannot tag it {tag}"
            )
        self._client.put_image(
            repositoryName=repository_name,
            imageManifest=found.manifest,
            imageManifestMediaType=found.media_type,
            imageTag=tag,
            imageDigest=found.digest,
        )

    def withdraw(self, repository_name: str, tag: str) -> bool:
        """Remove `tag` from the image it names, leaving the image and its other tags
        (ECR API reference, BatchDeleteImage: "You can remove a tag from an image by
        specifying the image's tag in your request"); False when no image holds it.
        Raises ImageError for any other failure."""
        answer = self._client.batch_delete_image(
            repositoryName=repository_name, imageIds=[{"imageTag": tag}]
        )
        for failure in answer.get("failures", []):
            if failure.get("failureCode") not in _NOT_FOUND_CODES:
                raise ImageError(
                    f"ECR could not remove the tag {repository_name}:{tag}: "
                    f"{failure.get('failureCode')}: {failure.get('failureReason')}"
                )
        return bool(answer.get("imageIds"))

    def _lookup(
        self, repository_name: str, image_id: dict[str, str], label: str
    ) -> RemoteImage | None:
        """BatchGetImage of one `image_id` (a tag or a digest); None when ECR has no such
        image. Raises ImageError for a missing repository or any other failure."""
        from botocore.exceptions import ClientError

        try:
            answer = self._client.batch_get_image(
                repositoryName=repository_name,
                imageIds=[image_id],
                acceptedMediaTypes=[
                    "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.oci.image.index.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                ],
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "RepositoryNotFoundException":
                raise ImageError(
                    f"ECR repository {repository_name!r} does not exist in "
                    f"{self._client.meta.region_name}: create it with the environment's "
                    "terraform apply, or fix the repository URL (an environment promotes from "
                    "a repository of its own account and region: give every environment the "
                    "same aws_region)"
                ) from None
            raise
        for failure in answer.get("failures", []):
            if failure.get("failureCode") not in _NOT_FOUND_CODES:
                raise ImageError(
                    f"ECR could not look up {label}: "
                    f"{failure.get('failureCode')}: {failure.get('failureReason')}"
                )
        images = answer.get("images", [])
        if not images:
            return None
        found = images[0]
        manifest = found.get("imageManifest", "")
        return RemoteImage(
            digest=found["imageId"]["imageDigest"],
            config_digest=_config_digest(manifest),
            manifest=manifest,
            media_type=found.get("imageManifestMediaType", ""),
        )


def _config_digest(manifest: str) -> str | None:
    try:
        return json.loads(manifest)["config"]["digest"]
    except (ValueError, KeyError, TypeError):
        return None


def split_repository_url(repository_url: str) -> tuple[str, str]:
    """`<registry host[:port]>/<repository name>` -> (registry, name)."""
    url = repository_url.removeprefix("https://").removeprefix("http://").rstrip("/")
    registry, _, name = url.partition("/")
    if not registry or not name or ":" in name or "@" in name:
        raise ImageError(
            f"repository URL {repository_url!r} is not <registry>/<name> "
            "(e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/onnx-ship), without a tag"
        )
    return registry, name


def is_loopback(registry: str) -> bool:
    """True for a registry on this machine's loopback interface (the test registry)."""
    return urllib.parse.urlsplit(f"//{registry}").hostname in LOOPBACK_HOSTS


def tls_flags(cli: ContainerCli, registry: str) -> list[str]:
    """The flags a podman command needs for the loopback test registry (plain HTTP)."""
    # Docker already treats 127.0.0.0/8 registries as insecure; podman needs telling.
    return ["--tls-verify=false"] if cli.is_podman and is_loopback(registry) else []


def login(cli: ContainerCli, registry: str, credentials: Credentials) -> None:
    """`<cli> login --username ... --password-stdin <registry>`: the password never hits argv."""
    run_cli(
        [
            cli.path,
            "login",
            *tls_flags(cli, registry),
            "--username",
            credentials.username,
            "--password-stdin",
            registry,
        ],
        what=f"logging in to {registry}",
        timeout=120,
        input=credentials.password,
    )


def local_image_id(cli: ContainerCli, image: str) -> str:
    """The local image's ID ("sha256:..."), the digest of its config."""
    result = subprocess.run(
        [cli.path, "image", "inspect", "--format", "{{.Id}}", image],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise ImageError(
            f"there is no local image {image} to push: build it first (`nox -s build`) from "
            f"the same commit ({result.stderr.strip()})"
        )
    output = result.stdout.strip()
    return output if output.startswith("sha256:") else f"sha256:{output}"


def push(
    image: str,
    repository_url: str,
    tag: str,
    *,
    ecr: Ecr,
    cli: ContainerCli | None = None,
) -> str:
    """Push the local `image` as `<repository_url>:<tag>` and return the digest the
    repository now holds under `tag` ("sha256:..."), as ECR reports it.

    The tag is immutable: when it exists already, the push is skipped (returning
    the existing digest) if it holds this image, and refused if it holds another.

    The digest is the repository's answer (BatchGetImage of the tag: ECR API reference),
    never the container CLI's own record of what it pushed: a task definition names the
    image by this digest, and one the repository does not hold is an image no task can
    pull. Docker with the containerd image store (the default of Docker Engine 29's new
    installs) builds an image index, and pushes only its single-platform manifest when the
    index's other content is not local (an image pulled for its platform), while it may
    record the index's digest for the repository.
    Raises ImageError when the repository holds nothing under `tag` after the push.
    """
    if not _TAG.fullmatch(tag):
        raise ImageError(f"tag {tag!r} is not a valid image tag")
    registry, repository_name = split_repository_url(repository_url)
    cli = cli or find_cli()
    image_id = local_image_id(cli, image)
    remote = f"{registry}/{repository_name}:{tag}"

    existing = ecr.existing(repository_name, tag)
    if existing is not None:
        if image_id in (existing.config_digest, existing.digest):
            say(f"{remote} already holds this image ({existing.digest}); nothing to push")
            return existing.digest
        raise ImageError(
            f"{remote} already exists with another image (digest {existing.digest}, config "
            f"{existing.config_digest}; local image {image_id}). Tags are immutable: push "
            "a new commit instead of re-tagging this one"
        )

    login(cli, registry, ecr.credentials())
    run_cli([cli.path, "tag", image, remote], what=f"tagging {image} as {remote}", timeout=60)
    command = [cli.path, "push", *tls_flags(cli, registry)]
    if cli.is_podman:
        # Docker's manifest format keeps the HEALTHCHECK, which OCI's drops.
        command += ["--format", "v2s2"]
    run_cli([*command, remote], what=f"pushing {remote}", timeout=PUSH_TIMEOUT_SECONDS)
    pushed = _pushed(ecr, repository_name, tag)
    if pushed is None:
        raise ImageError(
            f"{cli.name} pushed {remote} but ECR holds no image tagged {tag} in "
            f"{repository_name}: check that {registry} is this repository's registry "
            "(the repository URL and the AWS region name the same one), then deploy again"
        )
    say(f"pushed {remote} ({pushed.digest})")
    return pushed.digest


def _pushed(ecr: Ecr, repository_name: str, tag: str) -> RemoteImage | None:
    """What the repository holds under `tag` right after a push, read again after each of
    PUSH_LOOKUP_WAITS_SECONDS before it counts as missing: no documented guarantee says
    ECR's API reads a push back at once."""
    for wait in (0.0, *PUSH_LOOKUP_WAITS_SECONDS):
        time.sleep(wait)
        pushed = ecr.existing(repository_name, tag)
        if pushed is not None:
            return pushed
    return None


def pull(cli: ContainerCli, registry: str, reference: str) -> bool:
    """`<cli> pull <reference>`: True when the registry holds it and it is now local,
    False when the registry answers that the tag or the repository is not there.

    Raises ImageError naming the CLI's error for any other failure (an expired login,
    an unreachable registry, a full disk): that is not an answer about the tag.
    """
    what = f"{cli.name} pull {reference}"
    try:
        result = subprocess.run(
            [cli.path, "pull", *tls_flags(cli, registry), reference],
            capture_output=True,
            text=True,
            timeout=PUSH_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what} took longer than {PUSH_TIMEOUT_SECONDS}s") from None
    if result.returncode == 0:
        return True
    detail = (result.stderr or result.stdout).strip()
    if any(answer in detail.lower() for answer in _ABSENT):
        return False
    last = detail.splitlines()[-1] if detail else f"exit {result.returncode}"
    raise ImageError(
        f"{what} failed: {last}; check that {registry} answers and that the login is current, "
        "then run the deploy again"
    )
