"""The service image, for real: built from this repository with podman on the local
Debian base, run with the real mnist-8 mounted read-only, and pushed to a loopback
docker-registry with an ECR login token from moto (see tests/pipeline/containers.py for
what they need). test_image_on_fargate.py runs the same image as Fargate would.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline import image
from pipeline import registry as registries
from pipeline.datasets import read_idx_images, read_idx_labels
from tests.conftest import REPO, free_port, wait_for_http
from tests.pipeline.containers import (
    MANIFEST_V2,
    TEST_REPO,
    Built,
    ecr_podman,
    podman,
    podman_cli,
    registry_manifest,
    require,
    run_detached,
)

# -- fast: no containers -----------------------------------------------------------------


def fake_tool(directory: Path, name: str, version: str, info_exit: int) -> None:
    script = directory / name
    script.write_text(
        f'#!/bin/sh\ncase "$1" in --version) echo "{version}";; info) exit {info_exit};; esac\n'
    )
    script.chmod(0o755)


def test_find_cli_names_both_tools_when_neither_is_there(tmp_path: Path) -> None:
    with pytest.raises(image.ImageError, match="docker is not on PATH; podman is not on PATH"):
        image.find_cli(environ={"PATH": str(tmp_path)})


def test_find_cli_passes_over_a_docker_client_without_an_engine(tmp_path: Path) -> None:
    fake_tool(tmp_path, "docker", "Docker version 28.2.2", info_exit=1)
    fake_tool(tmp_path, "podman", "podman version 4.3.1", info_exit=0)
    assert image.find_cli(environ={"PATH": str(tmp_path)}) == image.ContainerCli(
        "podman", str(tmp_path / "podman")
    )
    (tmp_path / "podman").unlink()
    with pytest.raises(image.ImageError, match="found no Docker engine"):
        image.find_cli(environ={"PATH": str(tmp_path)})


def test_find_cli_prefers_docker_with_an_engine_and_knows_podmans_shim(tmp_path: Path) -> None:
    fake_tool(tmp_path, "docker", "Docker version 28.2.2", info_exit=0)
    assert image.find_cli(environ={"PATH": str(tmp_path)}).name == "docker"
    fake_tool(tmp_path, "docker", "podman version 4.3.1", info_exit=0)
    assert image.find_cli(environ={"PATH": str(tmp_path)}).is_podman


def test_git_sha_from_github_actions_or_git() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert image.git_sha({"GITHUB_SHA": sha.upper()}) == sha
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert image.git_sha({}) == head
    with pytest.raises(image.ImageError, match="not a 40-character hex sha"):
        image.git_sha({"GITHUB_SHA": "main"})


def test_build_refuses_tags_that_are_not_a_commit() -> None:
    with pytest.raises(image.ImageError, match="not a git commit sha"):
        image.build(TEST_REPO, "latest", "0" * 64)


def test_podman_build_keeps_the_healthcheck_and_passes_the_ca_as_a_secret(tmp_path: Path) -> None:
    command = image.build_command(
        image.ContainerCli("podman", "/usr/bin/podman"),
        "onnx-ship:abc",
        git_sha="abc",
        model_sha256="f" * 64,
        base_image="localhost/python-base:3.11",
        context=tmp_path,
        ca_bundle=Path("/etc/ssl/certs/ca-certificates.crt"),
    )
    assert command[:2] == ["/usr/bin/podman", "build"]
    # Whatever machine builds it (test below).
    assert command[command.index("--platform") + 1] == image.PLATFORM == "linux/amd64"
    assert "--format" in command and command[command.index("--format") + 1] == "docker"
    assert "id=ca,src=/etc/ssl/certs/ca-certificates.crt" in command
    assert "BASE_IMAGE=localhost/python-base:3.11" in command
    assert f"MODEL_SHA256={'f' * 64}" in command
    assert not any(arg.startswith("SOURCE_URL=") for arg in command)  # the Dockerfile's default
    assert command[-1] == str(tmp_path)


def test_the_image_is_built_for_the_architecture_every_task_definition_runs() -> None:
    """On an arm64 machine (a Mac) a build without --platform makes an arm64-only image,
    which Fargate tasks of cpu_architecture X86_64 cannot start."""
    declared = set()
    for path in (REPO / "terraform").rglob("*.tf"):
        declared |= set(re.findall(r'cpu_architecture\s*=\s*"([A-Z0-9_]+)"', path.read_text()))
    assert declared == {image.ECS_CPU_ARCHITECTURE[image.PLATFORM]}


def test_the_image_and_the_placeholder_start_from_one_base_image() -> None:
    """`nox -s build`, a plain `docker build` and Terraform's placeholder task pull the same
    image from the same registry (ECR Public: its quota is data, not pulls an hour)."""
    dockerfile = (REPO / "Dockerfile").read_text()
    (argument,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, flags=re.MULTILINE)
    variables = (REPO / "terraform" / "modules" / "service" / "variables.tf").read_text()
    placeholder = re.search(
        r'variable "placeholder_image" \{.*?default\s*=\s*"([^"]+)"', variables, re.S
    )
    assert argument == image.DEFAULT_BASE_IMAGE == placeholder[1]
    assert argument.startswith("public.ecr.aws/")


def test_source_label_comes_from_github_actions() -> None:
    environ = {"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "acme/onnx-ship"}
    assert image.source_url(environ) == "https://github.com/acme/onnx-ship"
    assert image.source_url({}) is None


def test_repository_urls_and_loopback_registries() -> None:
    assert registries.split_repository_url("123.dkr.ecr.eu-west-1.amazonaws.com/onnx-ship") == (
        "123.dkr.ecr.eu-west-1.amazonaws.com",
        "onnx-ship",
    )
    with pytest.raises(image.ImageError, match="without a tag"):
        registries.split_repository_url("123.dkr.ecr.eu-west-1.amazonaws.com/onnx-ship:abc")
    assert registries.is_loopback("127.0.0.1:5000") and registries.is_loopback("localhost")
    assert not registries.is_loopback("123.dkr.ecr.eu-west-1.amazonaws.com")


@pytest.mark.integration
def test_ecr_login_token_is_decoded(aws) -> None:
    credentials = registries.Ecr(boto3.client("ecr")).credentials()
    assert credentials.username == "AWS"
    assert credentials.password  # moto's "<account>-auth-token"


@pytest.mark.integration
def test_ecr_tag_lookup(aws) -> None:
    ecr = registries.Ecr(boto3.client("ecr"))
    with pytest.raises(image.ImageError, match="'onnx-ship' does not exist in us-east-1: "):
        ecr.existing("onnx-ship", "abc")
    boto3.client("ecr").create_repository(repositoryName="onnx-ship")
    assert ecr.existing("onnx-ship", "abc") is None
    put_manifest("onnx-ship", "abc", config_digest="sha256:" + "1" * 64)
    found = ecr.existing("onnx-ship", "abc")
    assert found is not None and found.config_digest == "sha256:" + "1" * 64


def put_manifest(repository: str, tag: str, config_digest: str, digest: str | None = None) -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 1,
            "digest": config_digest,
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": 1,
                "digest": "sha256:" + "2" * 64,
            }
        ],
    }
    extra = {"imageDigest": digest} if digest else {}
    boto3.client("ecr").put_image(
        repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag, **extra
    )


# -- slow: the real image ------------------------------------------------------------------


@pytest.fixture(scope="module")
def container(built: Built, reference_files: dict[str, Path]) -> Iterator[str]:
    """The image serving the real mnist-8 (mounted read-only), on a loopback port.

    The container shares the host's network and listens on 127.0.0.1: rootless podman
    publishes ports only through a TAP device (slirp4netns or pasta), which not every
    machine lets an unprivileged user open, while host networking needs none.
    """
    name = f"onnx-ship-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    run_detached(
        name,
        "--env",
        "HOST=127.0.0.1",
        "--env",
        f"PORT={port}",
        "--volume",
        f"{reference_files['model']}:/fixtures/mnist-8.onnx:ro",
        "--env",
        "MODEL_URL=file:///fixtures/mnist-8.onnx",
        "--env",
        f"MODEL_SHA256={built.model_sha256}",
        built.ref,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v2/health/ready", timeout=90)
        yield f"{name} http://127.0.0.1:{port}"
    except Exception:
        print(podman("logs", name, check=False).stdout)
        raise
    finally:
        podman("rm", "--force", "--volumes", name, check=False)  # and the image's VOLUME


def name_and_url(container: str) -> tuple[str, str]:
    name, url = container.split()
    return name, url


@pytest.mark.slow
@pytest.mark.integration
def test_image_is_labelled_with_commit_and_model(built: Built) -> None:
    labels = json.loads(
        podman("image", "inspect", "--format", "{{json .Labels}}", built.ref).stdout
    )
    assert labels["org.opencontainers.image.revision"] == built.sha
    assert labels["model.sha256"] == built.model_sha256
    assert labels["org.opencontainers.image.title"] == "onnx-ship"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert built.ref.endswith(f":{built.sha}")


def python_in(built: Built, code: str) -> str:
    """What `python -c code` prints in the image, run without a network."""
    return podman(
        "run", "--rm", "--network", "none", "--entrypoint", "python", built.ref, "-c", code
    ).stdout  # fmt: skip


@pytest.mark.slow
@pytest.mark.integration
def test_image_has_no_compiler_installer_or_model(built: Built) -> None:
    found = python_in(
        built,
        "import pathlib, shutil; "
        "tools = [t for t in ('gcc', 'cc', 'g++', 'make', 'pip', 'pip3') if shutil.which(t)]; "
        # onnxruntime ships three tiny sample models of its own; nothing else may be there.
        "models = [str(p) for p in pathlib.Path('/').glob('**/*.onnx') "
        "          if '/site-packages/onnxruntime/datasets/' not in str(p)]; "
        "print(tools + models)",
    ).strip()
    assert found == "[]"


@pytest.mark.slow
@pytest.mark.integration
def test_image_holds_exactly_the_runtime_packages_uv_lock_pins(built: Built) -> None:
    """What the gate and the tests ran is what the image runs: every distribution in the
    image is the service or one of the runtime packages uv.lock pins, at its version, and
    none is missing (the lock read by `uv export`, its markers evaluated as in the image)."""
    uv = shutil.which("uv")
    require(uv is not None, "uv is not installed", "pip install uv")
    inside = json.loads(
        python_in(
            built,
            "import importlib.metadata as m, json; from packaging import markers; "
            "print(json.dumps({'environment': markers.default_environment(), 'installed': "
            "sorted([d.metadata['Name'], d.version] for d in m.distributions())}))",
        )
    )
    exported = subprocess.run(
        [str(uv), "export", "--locked", "--offline", "--no-default-groups", "--no-emit-project",
         "--no-hashes", "--no-annotate", "--no-header", "--project", str(REPO)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = {(project["name"], project["version"])}
    for line in exported.splitlines():
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(inside["environment"]):
            (version,) = (spec.version for spec in requirement.specifier)
            pinned.add((canonicalize_name(requirement.name), version))
    installed = {(canonicalize_name(name), version) for name, version in inside["installed"]}
    assert installed == pinned


@pytest.mark.slow
@pytest.mark.integration
def test_runs_as_non_root_and_becomes_healthy(built: Built, container: str) -> None:
    name, url = name_and_url(container)
    assert podman("exec", name, "id", "-u").stdout.strip() != "0"
    assert podman("inspect", "--format", "{{.Config.User}}", name).stdout.strip() == "10001:10001"
    # The image's own HEALTHCHECK command, run once now (no systemd timers here).
    assert podman("healthcheck", "run", name, check=False).returncode == 0
    health = podman("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
    assert health == "healthy"
    with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as answer:
        assert json.load(answer) == {"ready": True}


@pytest.mark.slow
@pytest.mark.integration
def test_predicts_real_mnist_test_images(container: str, reference_files: dict[str, Path]) -> None:
    _, url = name_and_url(container)
    images = read_idx_images(reference_files["images"])[:10]
    labels = read_idx_labels(reference_files["labels"])[:10]
    predictions = []
    for pixels in images:
        body = json.dumps({"data": pixels.reshape(784).tolist()}).encode()
        request = urllib.request.Request(
            f"{url}/predict", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            predictions.append(json.load(answer)["prediction"])
    assert predictions == labels.tolist()  # the first ten t10k digits: 7 2 1 0 4 1 4 9 5 9


@pytest.mark.slow
@pytest.mark.integration
def test_stops_promptly_and_cleanly_on_sigterm(container: str) -> None:
    """ECS sends SIGTERM and kills 30 s later: the service must drain and exit 0 well before."""
    name, _ = name_and_url(container)
    started = time.monotonic()
    podman("stop", "--time", "20", name)
    assert time.monotonic() - started < 10
    assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker-registry on a loopback port: plain HTTP, no auth, storage in a temp dir."""
    require(shutil.which("docker-registry") is not None, "docker-registry is not installed")
    root = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{free_port()}"
    template = (REPO / ".ci" / "registry.yml").read_text()
    config = root / "config.yml"
    config.write_text(template.replace("@ADDR@", address).replace("@STORAGE@", str(root / "data")))
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(f"http://{address}/v2/", timeout=30, process=process)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.integration
def test_push_logs_in_pushes_and_keeps_tags_immutable(
    built: Built, registry: str, aws, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    boto3.client("ecr").create_repository(repositoryName="onnx-ship")
    ecr = registries.Ecr(boto3.client("ecr"))
    cli = ecr_podman(tmp_path)
    request.addfinalizer(
        lambda: podman("untag", built.ref, f"{registry}/onnx-ship:{built.sha}", check=False)
    )

    digest = registries.push(built.ref, f"{registry}/onnx-ship", built.sha, ecr=ecr, cli=cli)

    pushed = registry_manifest(registry, "onnx-ship", built.sha)
    assert pushed is not None and pushed[0] == digest
    manifest = json.loads(pushed[1])
    assert manifest["mediaType"] == MANIFEST_V2  # Docker format: the HEALTHCHECK survives
    local_id = registries.local_image_id(built.cli, built.ref)
    assert manifest["config"]["digest"] == local_id

    # ECR now holds this image under the tag: a second push is a no-op returning its digest.
    assert (
        registries.push(built.ref, f"{registry}/onnx-ship", built.sha, ecr=ecr, cli=cli) == digest
    )

    # Another image under the same tag is refused before anything is pushed.
    boto3.client("ecr").create_repository(repositoryName="onnx-ship-other")
    put_manifest("onnx-ship-other", built.sha, config_digest="sha256:" + "3" * 64)
    with pytest.raises(image.ImageError, match="Tags are immutable"):
        registries.push(built.ref, f"{registry}/onnx-ship-other", built.sha, ecr=ecr, cli=cli)
    assert registry_manifest(registry, "onnx-ship-other", built.sha) is None


HELD = "sha256:" + "5" * 64
RECORDED = "sha256:" + "9" * 64


class ScriptedEcr:
    """An Ecr whose tag lookups answer from `answers`, one a call, in order."""

    def __init__(self, *answers: registries.RemoteImage | None) -> None:
        self._answers = list(answers)
        self.lookups = 0

    def credentials(self) -> registries.Credentials:
        return registries.Credentials("AWS", "token")

    def existing(self, repository_name: str, tag: str) -> registries.RemoteImage | None:
        self.lookups += 1
        return self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]


def docker_recording_another_digest(directory: Path) -> image.ContainerCli:
    """A `docker` whose login, tag and push succeed, whose image ID is sha256:1..., and
    which records sha256:9... as the repository's digest, as Docker with the containerd
    image store records an index's digest after pushing only its platform's manifest."""
    script = directory / "docker"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1 $4" in\n'
        '  "image {{.Id}}") echo "sha256:' + "1" * 64 + '" ;;\n'
        '  "image {{json .RepoDigests}}") echo \'["r.example/onnx-ship@' + RECORDED + "\"]' ;;\n"
        "  login*) cat > /dev/null ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return image.ContainerCli("docker", str(script))


def test_push_returns_the_digest_the_repository_holds_not_the_clis(tmp_path: Path) -> None:
    """The digest a task definition will name is the one ECR holds under the tag after
    the push, whatever the container CLI recorded."""
    ecr = ScriptedEcr(None, registries.RemoteImage(HELD, "sha256:" + "1" * 64))
    cli = docker_recording_another_digest(tmp_path)
    assert registries.push("onnx-ship:abc", "r.example/onnx-ship", "abc", ecr=ecr, cli=cli) == HELD


def test_push_looks_again_before_a_pushed_tag_counts_as_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registries, "PUSH_LOOKUP_WAITS_SECONDS", (0, 0, 0, 0, 0))
    cli = docker_recording_another_digest(tmp_path)
    late = ScriptedEcr(None, None, None, registries.RemoteImage(HELD, None))
    assert registries.push("onnx-ship:abc", "r.example/onnx-ship", "abc", ecr=late, cli=cli) == HELD
    missing = ScriptedEcr(None)
    with pytest.raises(
        image.ImageError,
        match=r"^docker pushed r.example/onnx-ship:abc but ECR holds no image tagged abc in "
        r"onnx-ship: check that r.example is this repository's registry",
    ):
        registries.push("onnx-ship:abc", "r.example/onnx-ship", "abc", ecr=missing, cli=cli)
    assert missing.lookups == 2 + len(registries.PUSH_LOOKUP_WAITS_SECONDS)


def docker_pull_failing_with(directory: Path, message: str) -> image.ContainerCli:
    """A `docker` whose pull prints `message` on stderr and exits 1, as docker does."""
    script = directory / "docker"
    script.write_text(f"#!/bin/sh\necho '{message}' >&2\nexit 1\n")
    script.chmod(0o755)
    return image.ContainerCli("docker", str(script))


@pytest.mark.parametrize(
    "message",
    [
        # docker pull from ECR: a tag the repository does not hold, a repository that is not there
        "Error response from daemon: manifest for 123456789012.dkr.ecr.us-east-1.amazonaws.com/"
        "onnx-ship-dev:verified-x not found: manifest unknown: Requested image not found",
        "Error response from daemon: repository 123456789012.dkr.ecr.us-east-1.amazonaws.com/"
        "onnx-ship-dev not found: name unknown: The repository with name 'onnx-ship-dev' does "
        "not exist in the registry with id '123456789012'",
    ],
    ids=["tag", "repository"],
)
def test_pull_reads_a_registrys_not_there_as_no(tmp_path: Path, message: str) -> None:
    cli = docker_pull_failing_with(tmp_path, message)
    assert registries.pull(cli, "123456789012.dkr.ecr.us-east-1.amazonaws.com", "r:t") is False


def test_pull_raises_on_a_failure_that_is_not_an_answer_about_the_tag(tmp_path: Path) -> None:
    """An expired login is not "this tag is not there": a deploy must not read it as
    "dev never verified this" (docker's message when the ECR token has expired)."""
    cli = docker_pull_failing_with(
        tmp_path,
        "Error response from daemon: pull access denied for 123456789012.dkr.ecr.us-east-1."
        "amazonaws.com/onnx-ship-dev, repository does not exist or may require docker login: "
        "denied: Your authorization token has expired. Reauthenticate and try again.",
    )
    with pytest.raises(image.ImageError, match=r"docker pull r:t failed: .*token has expired"):
        registries.pull(cli, "123456789012.dkr.ecr.us-east-1.amazonaws.com", "r:t")


@pytest.mark.integration
def test_pull_tells_a_missing_tag_from_a_registry_that_does_not_answer(registry: str) -> None:
    """With podman and docker-registry for real: a tag the registry does not hold is a no;
    a registry that does not answer is an error naming it."""
    cli = podman_cli()
    assert registries.pull(cli, registry, f"{registry}/onnx-ship:verified-none") is False
    closed = f"127.0.0.1:{free_port()}"
    with pytest.raises(image.ImageError, match=rf"podman pull {closed}/onnx-ship:x failed: .*"):
        registries.pull(cli, closed, f"{closed}/onnx-ship:x")


def test_ecr_token_is_base64_of_user_and_password() -> None:
    class FakeClient:
        def get_authorization_token(self) -> dict:
            token = base64.b64encode(b"AWS:secret:with:colons").decode()
            return {"authorizationData": [{"authorizationToken": token}]}

    assert registries.Ecr(FakeClient()).credentials() == registries.Credentials(
        "AWS", "secret:with:colons"
    )
