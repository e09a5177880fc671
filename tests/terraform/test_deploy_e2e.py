"""End to end: `terraform apply` of dev and prod against the moto server, then
`nox -s deploy-dev`, `nox -s status -- dev` and a prod deploy, each as its environment's
deploy role, and the scheduled compaction as its own role, with moto authorising every
request against IAM.

The deploy role's credentials come from moto's STS (AssumeRoleWithWebIdentity, as the
workflow gets them; moto checks neither the token nor the trust conditions). Once
Terraform has applied, moto's IAM authorisation is on: S3 requests are checked against
the role's policy with their resources. moto authorises ECS, ECR and CloudWatch requests
against the resource `*`, so here the deploy roles' statements of those are widened to `*`,
keeping their actions (moto still refuses any action Terraform did not grant); the
resources, conditions and iam:PassRole moto does not evaluate are checked on the
rendered policies by test_moto_apply.py. The bucket policies (TLS only) are lifted:
moto counts their condition as met and would refuse every object request.

moto authorises no registry request either, so every `podman pull` and `push` the deploy
runs is logged (`CONTAINER_CLI` is a wrapper of podman, tests/pipeline/containers.py
`ecr_podman`) and checked against the deploy role's policy as Terraform rendered it, with
the actions ECR authorises for that command (pipeline/aws_calls.py `REGISTRY_ACTIONS`).

What moto cannot be stands in on loopback: moto's ECS runs no containers, so each
service's task is a real local service started from the revision the service points
at, with the task role's credentials (tests/terraform/ecs_stand_in.py): it loads the
model from the bucket's models/ the deploy published to and captures to capture/<env>/.
moto's ECR keeps no image bytes, so images go to the loopback docker-registry
(<ENV>_ECR_REPOSITORY_URL) while the ECR API (login token, tag lookups) is moto's; the
wrapper stores each pushed manifest in moto's repository too (same tag and digest), so
the lookups answer about what the registry holds, as ECR's do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from pipeline import aws_calls, compaction_task, image, promotion, terraform
from pipeline.alarms import DeploymentAlarms
from service.capture import partformat
from service.capture.records import PartNamer, Pending, encode_parts
from service.model import ModelInfo
from tests.conftest import REPO, free_port
from tests.pipeline.containers import (
    BASE_IMAGE,
    REGISTRY,
    dangling_images,
    delete_from_registry,
    ecr_podman,
    podman,
    registry_takes_ecr_tags,
    remove_dangling_since,
    remove_names,
    require_podman,
    require_registry,
)
from tests.service.conftest import MNIST8_SHA256
from tests.terraform import iam
from tests.terraform.conftest import (
    MOTO_STATE_BUCKET,
    MOTO_TFVARS,
    apply_everything,
    assume,
    copy_terraform,
)
from tests.terraform.ecs_stand_in import TaskStandIn

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]

ENVS = terraform.ENVIRONMENTS


def run(*command: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    print(result.stdout[-4000:], result.stderr[-6000:], sep="\n")
    return result


@dataclass
class Deployment:
    """Both environments applied to moto, with IAM enforced; what each role may use."""

    work: Path
    endpoint: str
    outputs: dict[str, dict[str, Any]]
    admin: dict[str, str]  # boto3 keyword arguments of an administrator, for the checks
    deploy_roles: dict[str, dict[str, str]]  # AWS_* variables per environment
    compaction_roles: dict[str, dict[str, str]]  # the same, of the compaction task's role
    stand_ins: dict[str, TaskStandIn]
    # Each deploy role's policies as Terraform rendered them (before the widening below).
    deploy_policies: dict[str, list[dict[str, Any]]]
    registry_log: Path  # "<pull|push> <reference>" per container CLI command

    def client(self, service: str) -> Any:
        return boto3.client(
            service, endpoint_url=self.endpoint, region_name="us-east-1", **self.admin
        )


STAR_ONLY_SERVICES = ("cloudwatch", "ecs", "ecr", "secretsmanager")


def role_policy_documents(role: str, client: Any) -> list[dict[str, Any]]:
    return [
        json.loads(
            json.dumps(client.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])
        )
        for name in client.list_role_policies(RoleName=role)["PolicyNames"]
    ]


def registry_refusals(deployment: Deployment, env: str, since: int = 0) -> list[str]:
    """The logged registry commands (from line `since`) that ECR would refuse the deploy
    role of `env`: each action ECR authorises for the command, on the repository's ARN,
    evaluated on the role's policy as Terraform rendered it."""
    account = str(deployment.outputs[env]["deploy_role_arn"]).split(":")[4]
    refused = []
    for line in deployment.registry_log.read_text().splitlines()[since:]:
        command, reference = line.split(" ", 1)
        registry, _, rest = reference.partition("/")
        if registry != REGISTRY:
            continue
        repository = rest.split("@")[0].split(":")[0]
        arn = f"arn:aws:ecr:us-east-1:{account}:repository/{repository}"
        for action in aws_calls.REGISTRY_ACTIONS[command]:
            if not iam.allowed(deployment.deploy_policies[env], action, arn, {}):
                refused.append(f"{command} {reference}: {action} on {arn}")
    return refused


def as_moto_authorises(role: str, client: Any) -> None:
    """Widen the resources of `role`'s CloudWatch-, ECS-, ECR- and Secrets-Manager-only
    statements to `*` (moto authorises those services against `*` only, and CloudWatch's
    actions under the prefix `monitoring`), and add the
    bucket itself to each statement that lets it delete objects: moto authorises a
    DeleteObjects request (one request, many keys) as s3:DeleteObject on the bucket's ARN,
    where S3 checks s3:DeleteObject on each key's (S3 API reference, DeleteObjects)."""
    for name in client.list_role_policies(RoleName=role)["PolicyNames"]:
        document = client.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        document = json.loads(json.dumps(document))
        for statement in iam.statements(document):
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            if all(action.split(":")[0] in STAR_ONLY_SERVICES for action in actions):
                statement["Resource"] = "*"
            # moto names CloudWatch's actions after its endpoint (monitoring:DescribeAlarms
            # where IAM has cloudwatch:DescribeAlarms): grant both spellings.
            actions += [
                f"monitoring:{a.split(':')[1]}" for a in actions if a.startswith("cloudwatch:")
            ]
            statement["Action"] = actions
            if "s3:DeleteObject" in actions:
                resources = statement["Resource"]
                resources = [resources] if isinstance(resources, str) else resources
                buckets = {resource.split("/", 1)[0] for resource in resources}
                statement["Resource"] = sorted(set(resources) | buckets)
        client.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(document))


@pytest.fixture(scope="module")
def fresh_images() -> Iterator[None]:
    """No image of an earlier run of this commit: the shared registry loses this tree's
    verified tags first, so prod can only promote what this run's dev verified; and the
    images the deploys made of this commit (a venv layer of their own) and the build's
    untagged stages leave podman's store after, by their names in this run's
    repositories, tags and registry digests (`remove_names`: another checkout's test image
    of the same commit is the same image, and keeps its own name)."""
    require_podman()
    require_registry(REGISTRY)
    sha = image.git_sha()
    verified = promotion.verified_tag(promotion.git_tree(sha, REPO), MNIST8_SHA256)
    for env in ENVS:
        delete_from_registry(REGISTRY, f"onnx-ship-{env}", verified)
    dangling = dangling_images()
    yield
    remove_names(
        {"localhost/onnx-ship", *(f"{REGISTRY}/onnx-ship-{env}" for env in ENVS)}, {sha, verified}
    )
    # The build's first stage is left untagged (podman keeps it as a cache).
    remove_dangling_since(dangling)


@pytest.fixture(scope="module")
def deployment(moto_server, terraform_bin, tmp_path_factory, fresh_images) -> Iterator[Deployment]:
    moto_server.reset()
    work = copy_terraform(tmp_path_factory.mktemp("e2e") / "terraform")
    var_file = work / "moto.tfvars"
    var_file.write_text(MOTO_TFVARS)
    # moto's ECS reports MOTO_ECS_SERVICE_RUNNING (1) tasks running for every service, so
    # a release waits for stability only where one task is desired.
    (work / "envs" / "prod" / "moto.auto.tfvars").write_text("desired_count = 1\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(terraform.STATE_BUCKET_VARIABLE, MOTO_STATE_BUCKET)
        outputs = apply_everything(moto_server.endpoint, work, var_file)
    setup = {
        "endpoint_url": moto_server.endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    s3, iam_client = boto3.client("s3", **setup), boto3.client("iam", **setup)
    deploy_policies = {
        env: role_policy_documents(f"onnx-ship-{env}-deploy", iam_client) for env in ENVS
    }
    cli_dir = tmp_path_factory.mktemp("cli")
    registry_log = cli_dir / "registry.log"
    ecr_podman(cli_dir, registry_log)
    for env in ENVS:
        s3.delete_bucket_policy(Bucket=outputs[env]["bucket_name"])
        as_moto_authorises(f"onnx-ship-{env}-deploy", iam_client)
        # The ECS agent reads the container's secrets as the execution role.
        as_moto_authorises(f"onnx-ship-{env}-execution", iam_client)
        as_moto_authorises(f"onnx-ship-{env}-compaction", iam_client)
    admin = moto_server.user("e2e-admin", [{"Effect": "Allow", "Action": "*", "Resource": "*"}])
    deploy_roles = {
        env: assume(moto_server.endpoint, outputs[env]["deploy_role_arn"], web_identity=True)
        for env in ENVS
    }
    compaction_roles = {
        env: assume(moto_server.endpoint, outputs[env]["compaction_role_arn"], web_identity=False)
        for env in ENVS
    }
    local_aws = {"AWS_ENDPOINT_URL": moto_server.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    ecs = boto3.client("ecs", **{**setup, **admin})
    stand_ins = {
        env: TaskStandIn(
            ecs,
            outputs[env],
            free_port(),
            {
                **local_aws,
                **assume(moto_server.endpoint, outputs[env]["task_role_arn"], web_identity=False),
            },
            tmp_path_factory.mktemp(f"{env}-task-cache"),
            assume(moto_server.endpoint, outputs[env]["execution_role_arn"], web_identity=False),
        )
        for env in ENVS
    }
    try:
        with moto_server.enforcing_iam():
            for stand_in in stand_ins.values():
                stand_in.start()
            yield Deployment(
                work,
                moto_server.endpoint,
                outputs,
                admin,
                deploy_roles,
                compaction_roles,
                stand_ins,
                deploy_policies,
                registry_log,
            )
    finally:
        for stand_in in stand_ins.values():
            stand_in.stop()
        moto_server.reset()


@pytest.fixture(scope="module")
def pipeline_env(deployment) -> dict[str, str]:
    """The workflow's environment, less the role: names from the applied roots' outputs."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEV_", "PROD_", "VIRTUAL_ENV", "NOX_", "AWS_"))
    }
    env.update(
        AWS_ENDPOINT_URL=deployment.endpoint,
        AWS_DEFAULT_REGION="us-east-1",
        TERRAFORM_DIR=str(deployment.work),
        BASE_IMAGE=BASE_IMAGE,
        # The base image is in podman's store; a Docker engine (GitHub's runners) cannot see
        # it. podman, through the wrapper that logs its registry commands.
        CONTAINER_CLI=str(deployment.registry_log.parent / "podman"),
        DEV_ENDPOINT_URL=deployment.stand_ins["dev"].url,
        DEV_ECR_REPOSITORY_URL=f"{REGISTRY}/onnx-ship-dev",
        PROD_ENDPOINT_URL=deployment.stand_ins["prod"].url,
        PROD_ECR_REPOSITORY_URL=f"{REGISTRY}/onnx-ship-prod",
    )
    return env


def as_role(deployment: Deployment, pipeline_env: dict[str, str], env: str) -> dict[str, str]:
    return {**pipeline_env, **deployment.deploy_roles[env]}


def nox(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "nox", "-f", str(REPO / "noxfile.py"), *args, env=env)


def captured(deployment: Deployment, env: str) -> list[str]:
    bucket = deployment.outputs[env]["bucket_name"]
    listing = deployment.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"capture/{env}/")
    return [item["Key"] for item in listing.get("Contents", [])]


def test_deploy_dev_then_status_as_the_deploy_role(deployment, pipeline_env):
    outputs = deployment.outputs["dev"]
    ecs = deployment.client("ecs")
    before = ecs.describe_services(
        cluster=outputs["cluster_name"], services=[outputs["service_name"]]
    )["services"][0]

    logged = len(deployment.registry_log.read_text().splitlines())
    deployed = nox("-s", "deploy-dev", env=as_role(deployment, pipeline_env, "dev"))
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    # ECR would have let the role run every push it ran; the released image is tagged
    # verified through ECR's API (a retag), not pulled.
    commands = deployment.registry_log.read_text().splitlines()[logged:]
    assert not any(line.startswith("pull ") for line in commands), commands
    assert registry_refusals(deployment, "dev", since=logged) == []

    service = ecs.describe_services(
        cluster=outputs["cluster_name"], services=[outputs["service_name"]]
    )["services"][0]
    assert service["taskDefinition"] != before["taskDefinition"]
    definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])
    container = definition["taskDefinition"]["containerDefinitions"][0]
    assert container["image"].startswith(f"{REGISTRY}/onnx-ship-dev@sha256:")
    variables = {v["name"]: v["value"] for v in container["environment"]}
    bucket = outputs["bucket_name"]
    assert variables["MODEL_URL"] == f"s3://{bucket}/models/{MNIST8_SHA256}/mnist-8.onnx"
    assert variables["MODEL_BATCHED_URL"].startswith(f"s3://{bucket}/models/{MNIST8_SHA256}/")
    assert variables["PREDICTION_LOG_URL"] == outputs["capture_url"]

    # The scheduled compaction now runs the released image, with its own command and role.
    compaction = ecs.describe_task_definition(taskDefinition=outputs["compaction_task_family"])
    (compactor,) = compaction["taskDefinition"]["containerDefinitions"]
    assert compactor["image"] == container["image"]
    assert compactor["command"][:4] == ["python", "-m", "pipeline.predictions.compact", "dev"]
    assert compaction["taskDefinition"]["taskRoleArn"] == outputs["compaction_role_arn"]

    s3 = deployment.client("s3")
    latest = json.loads(
        s3.get_object(Bucket=bucket, Key="deployments/dev/latest.json")["Body"].read()
    )
    assert latest["outcome"] == "succeeded"
    assert latest["image"] == container["image"]
    assert latest["gate"]["accuracy"] == pytest.approx(0.9891)
    # The verified tag names the very digest the service runs.
    verified = promotion.verified_tag(promotion.git_tree(image.git_sha(), REPO), MNIST8_SHA256)
    (tagged,) = deployment.client("ecr").batch_get_image(
        repositoryName="onnx-ship-dev", imageIds=[{"imageTag": verified}]
    )["images"]
    assert f"{REGISTRY}/onnx-ship-dev@{tagged['imageId']['imageDigest']}" == container["image"]

    shown = nox("-s", "status", "--", "dev", env=as_role(deployment, pipeline_env, "dev"))
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert latest["release_id"] in shown.stdout
    assert "ready" in shown.stdout and MNIST8_SHA256 in shown.stdout
    assert f"mnist-8 sha256 {MNIST8_SHA256} (token accepted)" in shown.stdout

    # The task that answered the smoke test ran as the task role: it loaded the model
    # from models/ and, once stopped, its captured predictions are in capture/dev/.
    task = deployment.stand_ins["dev"]
    assert task.errors == [] and task.revision == service["taskDefinition"]
    task.stop()
    assert captured(deployment, "dev"), "the task role wrote no prediction to capture/dev/"


def test_the_deploy_role_reads_its_services_deployment_alarms(deployment, pipeline_env):
    """What a release reads before it starts a deployment, under the role that reads it:
    the alarms Terraform wired to the service's deployments (moto's ECS keeps no
    deploymentConfiguration, so the release's own path never reaches this call here)."""
    role = deployment.deploy_roles["dev"]
    cloudwatch = boto3.client(
        "cloudwatch",
        endpoint_url=deployment.endpoint,
        region_name="us-east-1",
        aws_access_key_id=role["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=role["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=role["AWS_SESSION_TOKEN"],
    )
    names = deployment.outputs["dev"]["alarm_names"]
    states = DeploymentAlarms(cloudwatch).states(names)
    assert sorted(states) == sorted(names) and len(names) == 3
    assert {state.window_seconds for state in states.values()} == {120.0, 180.0}


def test_the_scheduled_compaction_merges_a_finished_hour_as_its_role(deployment, pipeline_env):
    """The compaction task's command (the one a release registers) run with the compaction
    role's credentials, moto authorising every S3 request against the role's policy: it
    lists capture/dev/, reads a finished hour's parts, writes their merged object and the
    manifest (If-None-Match) and deletes the parts, and the hour reads the same after."""
    outputs = deployment.outputs["dev"]
    s3, bucket = deployment.client("s3"), outputs["bucket_name"]
    capture_root = outputs["capture_url"].removeprefix(f"s3://{bucket}/")
    hour = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    scores = np.eye(10, dtype=np.float32)
    model = ModelInfo("mnist-8", "1", MNIST8_SHA256)
    requests = [
        Pending(
            hour.timestamp() + 1 + n, "/predict", f"hour-{n}", model, scores[[n % 10]], None, 0.002
        )
        for n in range(12)
    ]
    namer = PartNamer()
    for start in range(0, len(requests), 4):  # three parts, as three flushes write them
        for part in encode_parts(requests[start : start + 4], "dev", namer):
            s3.put_object(Bucket=bucket, Key=f"{capture_root}/{part.key}", Body=part.body)
    prefix = f"{capture_root}/{partformat.hour_key('dev', hour)}/"

    command = compaction_task.command("dev", outputs["capture_url"])
    assert command[0] == "python"
    compacted = run(
        sys.executable, *command[1:], env={**pipeline_env, **deployment.compaction_roles["dev"]}
    )
    assert compacted.returncode == 0, compacted.stderr[-3000:]

    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    names = sorted(key.rsplit("/", 1)[-1] for key in keys)
    assert [name[:15] for name in names] == ["_compacted-0001", "compacted-0001-"], names
    merged = s3.get_object(Bucket=bucket, Key=prefix + names[1])["Body"].read()
    ids = sorted(json.loads(line)["id"] for line in partformat.lines(merged))
    assert ids == sorted(request.request_id for request in requests)


def test_deploy_prod_as_its_role_ships_the_image_dev_verified(deployment, pipeline_env):
    outputs = deployment.outputs["prod"]
    # dev's release tagged its image verified through ECR's API; ECR's registry serves a
    # tag so added at once, and the loopback registry standing in for it learns it here.
    assert registry_takes_ecr_tags(REGISTRY, "onnx-ship-dev", deployment.client("ecr"))
    logged = len(deployment.registry_log.read_text().splitlines())
    deployed = run(
        sys.executable,
        "-m",
        "pipeline",
        "deploy",
        "prod",
        env=as_role(deployment, pipeline_env, "prod"),
    )
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert registry_refusals(deployment, "prod", since=logged) == []
    assert "promoting" in deployed.stderr and "building" not in deployed.stderr

    ecs = deployment.client("ecs")
    service = ecs.describe_services(
        cluster=outputs["cluster_name"], services=[outputs["service_name"]]
    )["services"][0]
    definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])
    image = definition["taskDefinition"]["containerDefinitions"][0]["image"]
    assert image.startswith(f"{REGISTRY}/onnx-ship-prod@sha256:")
    # Prod runs the bytes dev verified: dev's tag for this tree and model, by image ID.
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    tag = promotion.verified_tag(promotion.git_tree(sha, REPO), MNIST8_SHA256)
    verified = f"{REGISTRY}/onnx-ship-dev:{tag}"
    podman("pull", "--tls-verify=false", image)
    image_id = "{{.Id}}"
    assert (
        podman("image", "inspect", "--format", image_id, verified).stdout
        == podman("image", "inspect", "--format", image_id, image).stdout
    )
    latest = json.loads(
        deployment.client("s3")
        .get_object(Bucket=outputs["bucket_name"], Key="deployments/prod/latest.json")["Body"]
        .read()
    )
    assert (latest["promoted_from"], latest["verified_tag"]) == ("dev", tag)
    task = deployment.stand_ins["prod"]
    assert task.errors == [] and task.revision == service["taskDefinition"]
    task.stop()
    assert captured(deployment, "prod"), "the task role wrote no prediction to capture/prod/"
