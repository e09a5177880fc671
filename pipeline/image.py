"""Build the service image, tagged with the git commit, with the machine's container CLI.

`nox -s build` calls `build`: the top-level Dockerfile, built with whichever
container CLI the machine has (`docker`, else `podman`), tagged
`<repo>:<git sha>` and labelled with that sha and the model's sha256.
Pushing it is `pipeline.registry`'s.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import REPO

CLI_NAMES = ("docker", "podman")
DEFAULT_TAG_REPO = "onnx-ship"
# Docker's official image by its full name: podman resolves a short one only where an
# unqualified-search registry is configured.
# Docker's official image as Amazon ECR Public serves it (the `docker/library` namespace):
# the same image the placeholder task runs (terraform/modules/service, placeholder_image),
# pulled where unauthenticated pulls are bounded by data (500 GB a month: "Amazon ECR
# Public service quotas"), not by a count of pulls an hour per address, which a CI
# runner's shared addresses can exhaust.
DEFAULT_BASE_IMAGE = "public.ecr.aws/docker/library/python:3.11-slim"
# What the image is built for, whatever machine builds it: the task definitions run on
# Fargate's X86_64 (terraform/modules/service, runtime_platform; ECS API reference,
# RuntimePlatform). An image built on an arm64 machine without it would hold arm64 code
# only, and its tasks would never start.
PLATFORM = "linux/amd64"
# ECS's cpuArchitecture names for each image platform.
ECS_CPU_ARCHITECTURE = {"linux/amd64": "X86_64", "linux/arm64": "ARM64"}
BUILD_TIMEOUT_SECONDS = 30 * 60
# The files the Dockerfile copies; a change to any other file does not change the image.
BUILD_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "service", "pipeline")
CA_BUNDLE_CANDIDATES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
_SHA = re.compile(r"[0-9a-f]{40}")


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
    command += ["--platform", PLATFORM]
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
    run_cli(
        command,
        what=f"building {image}",
        timeout=BUILD_TIMEOUT_SECONDS,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )
    return image


def run_cli(
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
