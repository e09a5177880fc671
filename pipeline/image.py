"""Build the service image and push it to a registry, tagged with the git commit.

`nox -s build` calls `build`: the top-level Dockerfile, built with whichever
container CLI the machine has (`docker`, else `podman`), tagged
`<repo>:<git sha>` and labelled with that sha and the model's sha256.

`nox -s push -- <env>` calls `push`: it logs the CLI in to ECR with the token
from boto3's `ecr.get_authorization_token`, then pushes. Tags are immutable:
when the tag is already in the repository, the push is skipped if it holds
this very image and refused otherwise, so a tag always names one build.

Where the image goes (`repository_url`) and where the login token and the tag
lookup come from (an `Ecr`) are separate, so the same code pushes to a
loopback registry in tests with a token from a moto server.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import REPO

CLI_NAMES = ("docker", "podman")
DEFAULT_TAG_REPO = "onnx-ship"
DEFAULT_BASE_IMAGE = "python:3.11-slim"
BUILD_TIMEOUT_SECONDS = 30 * 60
PUSH_TIMEOUT_SECONDS = 20 * 60
# Registries on the loopback interface are the test registry: plain HTTP.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# The files the Dockerfile copies; a change to any other file does not change the image.
BUILD_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "service", "pipeline")
CA_BUNDLE_CANDIDATES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
_SHA = re.compile(r"[0-9a-f]{40}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# ECR's answers for "no image has this tag" in batch_get_image failures.
_NOT_FOUND_CODES = ("ImageNotFound", "ImageTagDoesNotExist")


class ImageError(Exception):
    """A build or push failed; the message says what to fix."""


@dataclass(frozen=True)
class ContainerCli:
    """The container command-line tool on this machine."""

    name: str  # "docker" or "podman"
    path: str

    @property
    def is_podman(self) -> bool:
        return self.name == "podman"


def find_cli(
    names: Sequence[str] = CLI_NAMES, environ: Mapping[str, str] | None = None
) -> ContainerCli:
    """The first usable of `docker` (with an engine that answers), `podman`; or ImageError.

    CONTAINER_CLI (a name or path) overrides the search.
    """
    env = os.environ if environ is None else environ
    if env.get("CONTAINER_CLI"):
        names = (env["CONTAINER_CLI"],)
    problems = []
    for name in names:
        path = shutil.which(name, path=env.get("PATH"))
        if not path:
            problems.append(f"{name} is not on PATH")
            continue
        kind = _cli_kind(path)
        # A docker client without a reachable engine cannot build; podman needs no daemon.
        if kind == "docker" and _answers(path, "info", "--format", "{{.ServerVersion}}") is None:
            problems.append(f"{path} found no Docker engine (`docker info` failed)")
            continue
        return ContainerCli(kind, path)
    raise ImageError(
        "no usable container CLI: " + "; ".join(problems) + ". Install docker or podman "
        "(on Debian, `.ci/setup.sh` installs podman), or set CONTAINER_CLI"
    )


def _cli_kind(path: str) -> str:
    """ "podman" for podman and for podman's `docker` shim (which prints podman's version)."""
    result = _answers(path, "--version")
    return (
        "podman" if "podman" in (result or "").lower() or "podman" in Path(path).name else "docker"
    )


def _answers(path: str, *args: str) -> str | None:
    try:
        result = subprocess.run(
            [path, *args], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def git_sha(environ: Mapping[str, str] | None = None, repo: Path = REPO) -> str:
    """The commit being built: GITHUB_SHA in GitHub Actions, else `git rev-parse HEAD`."""
    env = os.environ if environ is None else environ
    sha = env.get("GITHUB_SHA", "").strip().lower()
    if not sha:
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            raise ImageError(
                f"cannot read the git commit of {repo} ({str(detail).strip()}): build from a git "
                "checkout with at least one commit, or set GITHUB_SHA"
            ) from None
    if not _SHA.fullmatch(sha):
        raise ImageError(f"git commit {sha!r} is not a 40-character hex sha; fix GITHUB_SHA")
    return sha


def changed_build_inputs(repo: Path = REPO) -> list[str]:
    """Uncommitted changes to the files the image is built from (empty when clean)."""
    result = subprocess.run(
        ["git", "status", "--porcelain", "--", *BUILD_INPUTS],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    return [line[3:] for line in result.stdout.splitlines() if line.strip()]


def source_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The repository's web address for the image label, in GitHub Actions (else None)."""
    env = os.environ if environ is None else environ
    if env.get("GITHUB_REPOSITORY"):
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        return f"{server}/{env['GITHUB_REPOSITORY']}"
    return None


def default_ca_bundle(environ: Mapping[str, str] | None = None) -> Path | None:
    """The CA bundle pip should trust inside the build: PIP_CERT, SSL_CERT_FILE or the system's."""
    env = os.environ if environ is None else environ
    for candidate in (env.get("PIP_CERT"), env.get("SSL_CERT_FILE"), *CA_BUNDLE_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_command(
    cli: ContainerCli,
    image: str,
    *,
    git_sha: str,
    model_sha256: str,
    base_image: str,
    context: Path,
    ca_bundle: Path | None,
    source_url: str | None = None,
) -> list[str]:
    """The `<cli> build` command line for the top-level Dockerfile."""
    command = [cli.path, "build", "--file", str(context / "Dockerfile"), "--tag", image]
    if cli.is_podman:
        # OCI image configs have no HEALTHCHECK; the Docker format keeps it.
        command += ["--format", "docker"]
    for name, value in (
        ("BASE_IMAGE", base_image),
        ("GIT_SHA", git_sha),
        ("MODEL_SHA256", model_sha256),
        ("SOURCE_URL", source_url),
    ):
        if value:
            command += ["--build-arg", f"{name}={value}"]
    if ca_bundle is not None:
        # A build secret: pip trusts it during the build, no layer keeps it.
        command += ["--secret", f"id=ca,src={ca_bundle}"]
    command.append(str(context))
    return command


def build(
    tag_repo: str,
    git_sha: str,
    model_sha256: str,
    base_image: str = DEFAULT_BASE_IMAGE,
    *,
    context: Path = REPO,
    ca_bundle: Path | None = None,
    source_url: str | None = None,
    cli: ContainerCli | None = None,
) -> str:
    """Build the service image as `<tag_repo>:<git_sha>` and return that reference."""
    if not _SHA.fullmatch(git_sha):
        raise ImageError(f"tag {git_sha!r} is not a git commit sha: images are tagged by commit")
    if not re.fullmatch(r"[0-9a-f]{64}", model_sha256):
        raise ImageError(f"model sha256 {model_sha256!r} is not 64 hex characters; fix model.toml")
    if not (context / "Dockerfile").is_file():
        raise ImageError(f"no Dockerfile in {context}: pass the repository root as the context")
    cli = cli or find_cli()
    image = f"{tag_repo}:{git_sha}"
    command = build_command(
        cli,
        image,
        git_sha=git_sha,
        model_sha256=model_sha256,
        base_image=base_image,
        context=context,
        ca_bundle=ca_bundle,
        source_url=source_url,
    )
    _run(
        command,
        what=f"building {image}",
        timeout=BUILD_TIMEOUT_SECONDS,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )
    return image


# -- registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A registry login: what `<cli> login --username U --password-stdin` takes."""

    username: str
    password: str


@dataclass(frozen=True)
class RemoteImage:
    """What a repository already holds under a tag."""

    digest: str  # the manifest digest, "sha256:..."
    config_digest: str | None  # the image ID the manifest points to, when readable


class Ecr:
    """ECR through boto3: the login token and the lookup of an existing tag.

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
        from botocore.exceptions import ClientError

        try:
            answer = self._client.batch_get_image(
                repositoryName=repository_name,
                imageIds=[{"imageTag": tag}],
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
                    f"ECR repository {repository_name!r} does not exist: create it with the "
                    "environment's terraform apply, or fix the repository URL"
                ) from None
            raise
        for failure in answer.get("failures", []):
            if failure.get("failureCode") not in _NOT_FOUND_CODES:
                raise ImageError(
                    f"ECR could not look up {repository_name}:{tag}: "
                    f"{failure.get('failureCode')}: {failure.get('failureReason')}"
                )
        images = answer.get("images", [])
        if not images:
            return None
        found = images[0]
        return RemoteImage(
            digest=found["imageId"]["imageDigest"],
            config_digest=_config_digest(found.get("imageManifest", "")),
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


def _tls_flags(cli: ContainerCli, registry: str) -> list[str]:
    # Docker already treats 127.0.0.0/8 registries as insecure; podman needs telling.
    return ["--tls-verify=false"] if cli.is_podman and is_loopback(registry) else []


def login(cli: ContainerCli, registry: str, credentials: Credentials) -> None:
    """`<cli> login --username ... --password-stdin <registry>`: the password never hits argv."""
    _run(
        [
            cli.path,
            "login",
            *_tls_flags(cli, registry),
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
    """Push the local `image` as `<repository_url>:<tag>` and return the pushed digest.

    The tag is immutable: when it exists already, the push is skipped (returning
    the existing digest) if it holds this image, and refused if it holds another.
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
    _run([cli.path, "tag", image, remote], what=f"tagging {image} as {remote}", timeout=60)
    with tempfile.TemporaryDirectory(prefix="onnx-ship-push-") as scratch:
        command = [cli.path, "push", *_tls_flags(cli, registry)]
        digest_file = Path(scratch) / "digest"
        if cli.is_podman:
            # Docker's manifest format keeps the HEALTHCHECK, which OCI's drops.
            command += ["--format", "v2s2", "--digestfile", str(digest_file)]
        _run([*command, remote], what=f"pushing {remote}", timeout=PUSH_TIMEOUT_SECONDS)
        digest = (
            digest_file.read_text().strip()
            if digest_file.exists()
            else _repo_digest(cli, remote, f"{registry}/{repository_name}")
        )
    say(f"pushed {remote} ({digest})")
    return digest


def _repo_digest(cli: ContainerCli, image: str, repository: str) -> str:
    """Docker has no --digestfile: read the digest it recorded for the repository."""
    output = _run(
        [cli.path, "image", "inspect", "--format", "{{json .RepoDigests}}", image],
        what=f"reading the pushed digest of {image}",
        timeout=60,
        capture=True,
    )
    for entry in json.loads(output) or []:
        name, _, digest = entry.partition("@")
        if name == repository:
            return digest
    raise ImageError(f"{cli.name} pushed {image} but recorded no digest for {repository}")


def _run(
    command: list[str],
    *,
    what: str,
    timeout: float,
    capture: bool = False,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    if not capture:
        say(f"{what}: {' '.join(command)}" if input is None else what)
    try:
        result = subprocess.run(
            command,
            check=False,
            text=True,
            timeout=timeout,
            input=input,
            env=env,
            stdout=subprocess.PIPE if capture or input is not None else None,
            stderr=subprocess.PIPE if capture or input is not None else None,
        )
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what} took longer than {timeout:.0f}s and was stopped") from None
    except OSError as exc:
        raise ImageError(f"{what} could not start {command[0]}: {exc}") from None
    if result.returncode != 0:
        detail = (result.stderr or "").strip()
        raise ImageError(
            f"{what} failed (exit {result.returncode})"
            + (f": {detail}" if detail else "; see the output above")
        )
    return result.stdout or ""


def say(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)
