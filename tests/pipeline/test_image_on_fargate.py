"""The service image run the way ECS runs it on Fargate, from the task definition
Terraform registers.

dev is applied to the moto server; a release revision is registered on top of
Terraform's with the pipeline's own `Ecs.register`, and its container definition
decides the `podman run` (AWS-FIDELITY.md, "Fargate storage"):

- `readonlyRootFilesystem`: `--read-only --read-only-tmpfs=false` (podman's own
  writable /tmp would hide a fault Fargate shows);
- each mountPoint: a fresh root-owned 0755 directory, unless the image declares a
  VOLUME at exactly that path: then an anonymous volume, which copies the image's
  directory with its owner and mode as ECS does ("Bind mounts");
- the registered environment and user; `stopTimeout` as podman's stop timeout;
- `linuxParameters.initProcessEnabled`: `--init` (podman's catatonit as PID 1, as ECS
  runs its init process), without which the container's own process is PID 1 and
  ignores SIGTERM until it installs a handler.

The real mnist-8 is uploaded to the environment's bucket in moto and fetched by the
container; predictions are captured to the same bucket.

What the test changes, and why: the container shares the host's network to reach moto
on 127.0.0.1 (awsvpc would give the task its own interface), so it listens on 127.0.0.1
and a free port instead of 0.0.0.0:8080, and static credentials with AWS_ENDPOINT_URL
stand in for the task role. The tests run in file order on one container; the last
one stops it.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipeline.datasets import read_idx_images, read_idx_labels
from pipeline.environment import resolve
from pipeline.predictions.store import open_store, read_records
from pipeline.release import Candidate, Ecs, task_environment
from tests.conftest import free_port, wait_for_http
from tests.pipeline.containers import BASE_IMAGE, Built, podman, run_detached
from tests.terraform.conftest import apply_dev_to_moto
from tests.terraform.test_static import TERRAFORM_DIR, assignments

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

# Small enough to wait past, and above uvicorn's 5 s default keep-alive, which it must beat.
IDLE_TIMEOUT_SECONDS = 6
DEV_TFVARS = TERRAFORM_DIR / "envs" / "dev" / "terraform.tfvars"
MODEL_NAME = "mnist-8"


@dataclass
class Task:
    """One running container of the registered task definition."""

    name: str
    url: str
    container: dict[str, Any]  # the registered container definition
    environment: dict[str, str]  # what the container was given
    capture_url: str
    idle_timeout_seconds: int
    seconds_to_ready: float
    process: subprocess.Popen
    image_volumes: set[str]  # the image's VOLUME paths
    terraform_container: dict[str, Any]  # Terraform's own revision's (the placeholder)
    answered: list[str] = field(default_factory=list)  # request ids answered 200

    def post(self, path: str, document: dict, request_id: str, connection=None) -> dict:
        host, port = self.url.removeprefix("http://").split(":")
        conn = connection or http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request(
            "POST",
            path,
            body=json.dumps(document),
            headers={"Content-Type": "application/json", "X-Request-Id": request_id},
        )
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 200, body
        self.answered.append(request_id)
        if connection is None:
            conn.close()
        return body

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr


def client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def register_release(outputs: dict[str, Any], endpoint: str, built: Built, model: Path) -> dict:
    """Upload the model and register the revision a release of it would run; its container."""
    bucket = outputs["bucket_name"]
    key = f"models/{built.model_sha256}/{MODEL_NAME}.onnx"
    client("s3", endpoint).upload_file(str(model), bucket, key)
    env = resolve("dev", terraform_outputs=lambda _: outputs, environ={})
    candidate = Candidate(
        image=built.ref,
        git_sha=built.sha,
        model_name=MODEL_NAME,
        model_url=f"s3://{bucket}/{key}",
        model_sha256=built.model_sha256,
        gate={},
    )
    ecs_client = client("ecs", endpoint)
    ecs = Ecs(ecs_client)
    arn = ecs.register(
        env.task_definition_arn, env.container_name, built.ref, task_environment(candidate)
    )
    definition = ecs_client.describe_task_definition(taskDefinition=arn)["taskDefinition"]
    (container,) = [
        c for c in definition["containerDefinitions"] if c["name"] == outputs["container_name"]
    ]
    return container


def terraform_container(outputs: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """The container of Terraform's own revision: what runs until the first release."""
    definition = client("ecs", endpoint).describe_task_definition(
        taskDefinition=outputs["task_definition_arn"]
    )["taskDefinition"]
    (container,) = [
        c for c in definition["containerDefinitions"] if c["name"] == outputs["container_name"]
    ]
    return container


def load_balancer_idle_timeout(endpoint: str, name: str) -> int:
    """The idle timeout (seconds) Terraform gave the environment's load balancer."""
    elbv2 = client("elbv2", endpoint)
    arn = elbv2.describe_load_balancers(Names=[name])["LoadBalancers"][0]["LoadBalancerArn"]
    attributes = elbv2.describe_load_balancer_attributes(LoadBalancerArn=arn)["Attributes"]
    return int(next(a["Value"] for a in attributes if a["Key"] == "idle_timeout.timeout_seconds"))


def run_options(container: dict[str, Any], image_volumes: set[str], scratch: Path) -> list[str]:
    """`podman run` options that reproduce how Fargate runs `container`."""
    options = []
    if container.get("readonlyRootFilesystem"):
        options += ["--read-only", "--read-only-tmpfs=false"]
    for index, mount in enumerate(container.get("mountPoints", [])):
        path = mount["containerPath"]
        read_only = ",ro" if mount.get("readOnly") else ""
        if path in image_volumes:
            options += ["--mount", f"type=volume,dst={path}{read_only}"]
        else:
            host_dir = scratch / f"volume-{index}"
            host_dir.mkdir(mode=0o755)
            host_dir.chmod(0o755)  # root-owned 0755, whatever the umask
            options += ["--mount", f"type=bind,src={host_dir},dst={path}{read_only}"]
    if container.get("user"):
        options += ["--user", container["user"]]
    if container.get("linuxParameters", {}).get("initProcessEnabled"):
        options += ["--init"]
    options += ["--stop-timeout", str(container.get("stopTimeout", 30))]
    return options


def stopped_while_starting(
    container: dict[str, Any],
    image: str,
    environment: dict[str, str],
    image_volumes: set[str],
    scratch: Path,
) -> tuple[float, int]:
    """Start `container` as Fargate runs it and stop it at once, as ECS stops a task
    (SIGTERM, then SIGKILL `stopTimeout` seconds later): the seconds the stop took and
    the container's exit code."""
    name = f"onnx-ship-starting-{uuid.uuid4().hex[:8]}"
    port = str(free_port())
    run_detached(
        name,
        *run_options(container, image_volumes, scratch),
        *[f"--env={key}={value}" for key, value in sorted({**environment, "PORT": port}.items())],
        image,
        *container.get("command", []),
    )
    try:
        stop_timeout = int(container.get("stopTimeout", 30))
        started = time.monotonic()
        podman("stop", "--time", str(stop_timeout), name, timeout=stop_timeout + 30)
        took = time.monotonic() - started
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        return took, int(code)
    finally:
        podman("rm", "--force", "--volumes", name, check=False)


@pytest.fixture(scope="module")
def task(
    built: Built,
    moto_server: Any,
    terraform_bin: str,
    reference_files: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Task]:
    moto_server.reset()
    endpoint = moto_server.endpoint
    outputs = apply_dev_to_moto(
        tmp_path_factory.mktemp("fargate") / "terraform",
        endpoint,
        f"load_balancer_idle_timeout_seconds = {IDLE_TIMEOUT_SECONDS}\n",
    )
    container = register_release(outputs, endpoint, built, reference_files["model"])
    idle_timeout = load_balancer_idle_timeout(endpoint, outputs["cluster_name"])

    port = free_port()
    environment = {item["name"]: item["value"] for item in container["environment"]}
    environment.update(
        HOST="127.0.0.1",
        PORT=str(port),
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=outputs["aws_region"],
    )
    volumes = json.loads(
        podman("image", "inspect", "--format", "{{json .Config.Volumes}}", built.ref).stdout
    )
    name = f"onnx-ship-fargate-{uuid.uuid4().hex[:8]}"
    command = [
        "podman",
        "run",
        "--name",
        name,
        "--network",
        "host",
        *run_options(container, set(volumes or {}), tmp_path_factory.mktemp("task")),
        *[f"--env={key}={value}" for key, value in sorted(environment.items())],
        built.ref,
    ]
    log = tmp_path_factory.mktemp("logs") / "container.log"
    url = f"http://127.0.0.1:{port}"
    grace = int(assignments(DEV_TFVARS)["health_check_grace_period_seconds"])
    with log.open("w") as output:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        with pytest.MonkeyPatch.context() as patch:
            # The test reads the capture back from moto with the container's credentials.
            for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                patch.setenv(key, environment[key])
            patch.setenv("AWS_DEFAULT_REGION", environment["AWS_DEFAULT_REGION"])
            wait_for_http(f"{url}/v2/health/ready", timeout=grace, process=process)
            yield Task(
                name=name,
                url=url,
                container=container,
                environment=environment,
                capture_url=environment["PREDICTION_LOG_URL"],
                idle_timeout_seconds=idle_timeout,
                seconds_to_ready=time.monotonic() - started,
                process=process,
                image_volumes=set(volumes or {}),
                terraform_container=terraform_container(outputs, endpoint),
            )
    except Exception:
        print(log.read_text()[-6000:])
        raise
    finally:
        podman("rm", "--force", "--volumes", name, check=False)
        process.wait(timeout=30)
        moto_server.reset()


def test_becomes_ready_within_the_grace_period_with_the_model_fetched_into_its_volume(
    task: Task, built: Built
) -> None:
    grace = int(assignments(DEV_TFVARS)["health_check_grace_period_seconds"])
    print(f"\nready {task.seconds_to_ready:.1f}s after podman run")
    assert task.seconds_to_ready < grace
    assert task.container["readonlyRootFilesystem"] is True
    found = podman(
        "exec",
        task.name,
        "python",
        "-c",
        "import os, pathlib, tempfile; "
        "cache = pathlib.Path(os.environ['MODEL_CACHE_DIR']); "
        "print(os.getuid(), sorted(str(p.relative_to(cache)) for p in cache.rglob('*.onnx'))); "
        "tempfile.TemporaryFile().close(); print(tempfile.gettempdir())",
    ).stdout.split("\n")
    assert found[0] == f"10001 ['{built.model_sha256}/{MODEL_NAME}.onnx']"
    mounted = [m["containerPath"] for m in task.container["mountPoints"]]
    assert any(found[1].startswith(path) for path in mounted), "TMPDIR is not on a volume"
    # Even root cannot write outside the volumes: the root filesystem is read-only.
    assert podman("exec", "--user", "0", task.name, "touch", "/x", check=False).returncode != 0


def test_predicts_real_mnist_test_images(task: Task, reference_files: dict[str, Path]) -> None:
    images = read_idx_images(reference_files["images"])[:10]
    labels = read_idx_labels(reference_files["labels"])[:10]
    predictions = [
        task.post("/predict", {"data": pixels.reshape(784).tolist()}, f"digit-{i}")["prediction"]
        for i, pixels in enumerate(images)
    ]
    assert predictions == labels.tolist()


def test_an_idle_connection_outlasts_the_load_balancer_idle_timeout(task: Task) -> None:
    """The load balancer, not the target, must close idle connections (else 502s)."""
    assert task.idle_timeout_seconds == IDLE_TIMEOUT_SECONDS
    host, port = task.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    document = {"data": [0] * 784}
    task.post("/predict", document, "keep-alive-1", connection)
    time.sleep(task.idle_timeout_seconds + 1)
    task.post("/predict", document, "keep-alive-2", connection)  # the same connection
    connection.close()


def test_a_task_stopped_while_it_starts_stops_at_once(
    task: Task, built: Built, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """ECS stops tasks that are still starting (a failed deployment, a scale-in): SIGTERM
    reaches the service through the init process and ends it, rather than waiting out
    stopTimeout (120 s) for SIGKILL while the model loads."""
    took, code = stopped_while_starting(
        task.container,
        built.ref,
        task.environment,
        task.image_volumes,
        tmp_path_factory.mktemp("starting"),
    )
    print(f"\nstopped {took:.1f}s after SIGTERM while starting, exit {code}")
    assert code == 128 + signal.SIGTERM and took < 10


def test_the_placeholder_stops_at_once(
    task: Task, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Terraform's own revision, which runs until the first release: its placeholder
    installs no signal handler at all, so without an init process it always waited out
    stopTimeout, and the first release's rollout with it."""
    placeholder = task.terraform_container
    assert placeholder["command"][:2] == ["python", "-B"]
    took, code = stopped_while_starting(
        placeholder,
        BASE_IMAGE,  # has python, as the placeholder's public image does
        {item["name"]: item["value"] for item in placeholder["environment"]},
        set(),
        tmp_path_factory.mktemp("placeholder"),
    )
    print(f"\nplaceholder stopped {took:.1f}s after SIGTERM, exit {code}")
    assert code == 128 + signal.SIGTERM and took < 10


def test_stop_within_stop_timeout_leaves_every_answered_request_in_s3(task: Task) -> None:
    stop_timeout = task.container["stopTimeout"]
    assert task.environment["STOP_TIMEOUT_SECONDS"] == str(stop_timeout)
    # Answered just before SIGTERM: still in the service's memory when the stop begins.
    for i in range(20):
        task.post("/predict", {"data": [i] * 784}, f"last-{i}")
    started = time.monotonic()
    podman("stop", "--time", str(stop_timeout), task.name, timeout=stop_timeout + 30)
    stopped_in = time.monotonic() - started
    print(f"\nstopped {stopped_in:.1f}s after SIGTERM (stopTimeout {stop_timeout}s)")
    assert stopped_in < stop_timeout
    # uvicorn shuts down gracefully (the capture flushed in the lifespan's shutdown), then
    # raises the signal it caught again, so the process ends as SIGTERM ends it: 143, as
    # ECS reports a task it stopped. (A PID 1 without the init ignored that, exiting 0.)
    terminated = 128 + signal.SIGTERM
    assert task.process.wait(timeout=30) == terminated
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", task.name).stdout
    assert exit_code.strip() == str(terminated)
    captured = [record["id"] for record in read_records(open_store(task.capture_url), "dev")]
    assert sorted(captured) == sorted(task.answered)
