"""End to end: `terraform apply` of dev against the moto server, `nox -s deploy-dev` on that
state's outputs, `nox -s status -- dev`; then `deploy-prod` ships the image dev verified.

What moto cannot be stands in on loopback: moto's ECS runs no containers, so the endpoint
the smoke test calls is a real local service serving the same model (DEV_ENDPOINT_URL),
and moto's ECR keeps no image bytes, so images go to the loopback docker-registry
(DEV_ECR_REPOSITORY_URL) while the ECR API (login token, tag lookups) is moto's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from pipeline import promotion, terraform
from tests.conftest import REPO
from tests.pipeline.test_image import BASE_IMAGE, podman, require
from tests.service.conftest import MNIST8_SHA256, Server, start_server
from tests.terraform.conftest import (
    MOTO_STATE_BUCKET,
    MOTO_TFVARS,
    copy_terraform,
    point_at_moto,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]

REGISTRY = f"127.0.0.1:{os.environ.get('REGISTRY_PORT', '5000')}"


def run(*command: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    print(result.stdout[-4000:], result.stderr[-6000:], sep="\n")
    return result


@pytest.fixture(scope="module")
def dev_state(moto_server, terraform_bin, tmp_path_factory) -> Iterator[Path]:
    """A copy of terraform/ whose dev root was applied against the moto server."""
    require(shutil.which("podman") is not None, "podman is not installed")
    require(
        podman("image", "exists", BASE_IMAGE, check=False).returncode == 0,
        f"the base image {BASE_IMAGE} does not exist",
    )
    moto_server.reset()
    work = copy_terraform(tmp_path_factory.mktemp("e2e") / "terraform")
    var_file = work / "moto.tfvars"
    var_file.write_text(MOTO_TFVARS)
    for root in (work / "bootstrap", work / "envs" / "dev"):
        point_at_moto(root, moto_server.endpoint)
        terraform.init(root)
    terraform.apply(
        work / "bootstrap", extra_args=["-target=aws_iam_openid_connect_provider.github"]
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(terraform.STATE_BUCKET_VARIABLE, MOTO_STATE_BUCKET)
        terraform.apply("dev", terraform_dir=work, var_files=[var_file])
    # The bucket policy denies requests without TLS, and moto enforces it; the moto
    # server speaks plain HTTP on loopback, so the data-plane calls need it lifted here.
    bucket = terraform.outputs("dev", terraform_dir=work)["bucket_name"]
    boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).delete_bucket_policy(Bucket=bucket)
    yield work
    moto_server.reset()


@pytest.fixture(scope="module")
def endpoint(mnist8_path, tmp_path_factory) -> Iterator[Server]:
    """What the ECS tasks would be: the service, serving the referenced model."""
    server = start_server(
        {
            "MODEL_URL": str(mnist8_path),
            "MODEL_SHA256": MNIST8_SHA256,
            "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
            "PREDICTION_LOG_URL": "off",
        }
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pipeline_env(dev_state, endpoint, moto_server) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEV_", "PROD_", "VIRTUAL_ENV", "NOX_"))
    }
    env.update(
        AWS_ENDPOINT_URL=moto_server.endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        TERRAFORM_DIR=str(dev_state),
        BASE_IMAGE=BASE_IMAGE,
        # The base image is in podman's store; a Docker engine (GitHub's runners) cannot see it.
        CONTAINER_CLI="podman",
        DEV_ENDPOINT_URL=endpoint.url,
        DEV_ECR_REPOSITORY_URL=f"{REGISTRY}/onnx-ship-dev",
    )
    return env


def client(service: str, env: dict[str, str]):
    return boto3.client(
        service,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def nox(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "nox", "-f", str(REPO / "noxfile.py"), *args, env=env)


def test_terraform_apply_then_deploy_dev_then_status(pipeline_env, dev_state):
    outputs = terraform.outputs("dev", terraform_dir=dev_state)
    ecs = client("ecs", pipeline_env)
    before = ecs.describe_services(
        cluster=outputs["cluster_name"], services=[outputs["service_name"]]
    )["services"][0]

    deployed = nox("-s", "deploy-dev", env=pipeline_env)
    assert deployed.returncode == 0, deployed.stderr[-3000:]

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

    s3 = client("s3", pipeline_env)
    latest = json.loads(
        s3.get_object(Bucket=bucket, Key="deployments/dev/latest.json")["Body"].read()
    )
    assert latest["outcome"] == "succeeded"
    assert latest["image"] == container["image"]
    assert latest["gate"]["accuracy"] == pytest.approx(0.9891)

    shown = nox("-s", "status", "--", "dev", env=pipeline_env)
    assert shown.returncode == 0
    assert latest["release_id"] in shown.stdout
    assert "ready" in shown.stdout and MNIST8_SHA256 in shown.stdout


def test_deploy_prod_ships_the_image_dev_verified(
    pipeline_env, dev_state, endpoint, moto_server, monkeypatch
):
    """Prod's resources are made directly in moto here (its terraform apply is tested
    elsewhere); its names come from PROD_* variables."""
    from tests.pipeline.environments import make_environment

    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.setenv(name, pipeline_env[name])
    prod = make_environment(endpoint.url, name="onnx-ship-prod", environment="prod")
    env = {
        **pipeline_env,
        **{
            f"PROD_{k.upper()}": v
            for k, v in prod.__dict__.items()
            if k not in ("environment", "promote_from")
        },
        # What prod's promote_from_environments output says.
        "PROD_PROMOTE_FROM_ENVIRONMENTS": "dev",
    }
    env["PROD_ECR_REPOSITORY_URL"] = f"{REGISTRY}/onnx-ship-prod"
    client("ecr", pipeline_env).create_repository(repositoryName="onnx-ship-prod")

    deployed = run(sys.executable, "-m", "pipeline", "deploy", "prod", env=env)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert "promoting" in deployed.stderr and "building" not in deployed.stderr

    ecs = client("ecs", pipeline_env)
    service = ecs.describe_services(cluster="onnx-ship-prod", services=["onnx-ship-prod"])[
        "services"
    ][0]
    definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])
    image = definition["taskDefinition"]["containerDefinitions"][0]["image"]
    assert image.startswith(f"{REGISTRY}/onnx-ship-prod@sha256:")
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    tag = promotion.verified_tag(promotion.git_tree(sha, REPO), MNIST8_SHA256)
    verified = f"{REGISTRY}/onnx-ship-dev:{tag}"
    image_id = "{{.Id}}"
    assert (
        podman("image", "inspect", "--format", image_id, verified).stdout
        == podman("image", "inspect", "--format", image_id, f"onnx-ship:{sha}").stdout
    )
