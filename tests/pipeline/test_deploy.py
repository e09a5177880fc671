"""deploy: a model that fails the gate never reaches AWS; names come from outputs or variables."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import boto3
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pipeline import cli
from pipeline import deploy as deploy_module
from pipeline.batchable import batchable_copy
from pipeline.datasets import load_dataset, scaled_inputs
from pipeline.deploy import deploy
from pipeline.download import download
from pipeline.environment import REQUIRED, MissingEnvironment, override_name, resolve
from pipeline.gating import GateFailed
from tests.pipeline.environments import CLUSTER, make_environment
from tests.service.conftest import MNIST8_SHA256


@pytest.fixture
def broken_model(mnist8_path: Path, tmp_path: Path) -> Path:
    """mnist-8 with every weight zeroed: it answers class 0 for everything (~10% accuracy)."""
    model = onnx.load(mnist8_path)
    for initializer in model.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.dtype.kind == "f":
            initializer.CopyFrom(numpy_helper.from_array(weights * 0, initializer.name))
    path = tmp_path / "broken.onnx"
    onnx.save(model, path)
    return path


def aws_snapshot() -> dict:
    ecs, s3 = boto3.client("ecs"), boto3.client("s3")
    objects = {
        bucket["Name"]: [
            o["Key"] for o in s3.list_objects_v2(Bucket=bucket["Name"]).get("Contents", [])
        ]
        for bucket in s3.list_buckets()["Buckets"]
    }
    return {
        "task_definitions": ecs.list_task_definitions()["taskDefinitionArns"],
        "service": ecs.describe_services(cluster=CLUSTER, services=[CLUSTER])["services"][0][
            "taskDefinition"
        ],
        "objects": objects,
    }


@pytest.mark.integration
def test_a_gate_failure_touches_nothing_in_aws(aws, broken_model, monkeypatch, tmp_path):
    env = make_environment("http://127.0.0.1:9")
    for name, value in asdict(env).items():
        if name not in ("environment", "promote_from"):
            monkeypatch.setenv(override_name("dev", name), value)
    monkeypatch.setenv("MODEL_URL", str(broken_model))
    monkeypatch.delenv("MODEL_SHA256", raising=False)
    monkeypatch.chdir(tmp_path)  # the gate report lands in ./build/gate

    def must_not_run(*args, **kwargs):
        raise AssertionError("nothing may be built, pushed or released after a gate failure")

    for name in ("build_and_push", "promote", "release", "publish_model"):
        monkeypatch.setattr(deploy_module, name, must_not_run)
    before = aws_snapshot()
    with pytest.raises(GateFailed, match=r"gate failed: .*accuracy"):
        deploy("dev")
    assert aws_snapshot() == before
    assert (tmp_path / "build" / "gate" / "report.md").is_file()


def test_names_come_from_terraform_outputs_and_variables_override_them():
    outputs = {name: f"from-terraform-{name}" for name in REQUIRED}
    env = resolve(
        "prod",
        terraform_outputs=lambda e: outputs,
        environ={"PROD_ENDPOINT_URL": "http://127.0.0.1:8080"},
    )
    assert env.cluster_name == "from-terraform-cluster_name"
    assert env.endpoint_url == "http://127.0.0.1:8080"
    assert env.records_url == "from-terraform-deployments_url/prod"


def test_missing_names_say_what_to_do():
    def no_state(environment):
        raise RuntimeError("terraform is not on PATH")

    with pytest.raises(MissingEnvironment) as error:
        resolve("dev", terraform_outputs=no_state, environ={"DEV_CLUSTER_NAME": "c"})
    message = str(error.value)
    assert "terraform is not on PATH" in message
    assert "terraform/envs/dev" in message and "DEV_SERVICE_NAME" in message
    assert "DEV_CLUSTER_NAME" not in message
    with pytest.raises(MissingEnvironment, match="unknown environment 'staging'"):
        resolve("staging", environ={})


@pytest.mark.integration
def test_a_rerun_reuses_the_image_an_earlier_run_pushed_for_the_commit(aws, monkeypatch):
    """Tags are immutable and builds are not byte-reproducible: a second run of the same
    commit must not build again (its push would be refused) but ship what is there."""
    env = make_environment("http://127.0.0.1:9")  # its ECR repository too
    ecr = boto3.client("ecr")
    manifest = (
        '{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",'
        ' "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,'
        f' "digest": "sha256:{"c" * 64}"}}, "layers": []}}'
    )
    sha = "a" * 40
    ecr.put_image(repositoryName=CLUSTER, imageManifest=manifest, imageTag=sha)
    pushed = ecr.describe_images(repositoryName=CLUSTER)["imageDetails"][0]["imageDigest"]

    def must_not_build(*args, **kwargs):
        raise AssertionError("the commit's image exists: nothing may be built")

    monkeypatch.setattr(deploy_module.images, "build", must_not_build)
    monkeypatch.setattr(deploy_module.promotion, "git_tree", lambda commit, repo: "e" * 40)
    gated = SimpleNamespace(downloaded=SimpleNamespace(sha256s={"model": MNIST8_SHA256}))
    assert deploy_module.build_and_push(env, gated, sha) == f"127.0.0.1:5000/{CLUSTER}@{pushed}"


@pytest.mark.integration
def test_a_refused_model_upload_is_one_line_naming_the_missing_grant(
    aws, mnist8_path, monkeypatch, capsys
):
    """A deploy role that may read models/ but not write them: the CLI names the action,
    the object and the grant that fixes it, on one line, exit 2 (no traceback)."""
    env = make_environment("http://127.0.0.1:9")
    for name, value in asdict(env).items():
        if name not in ("environment", "promote_from"):
            monkeypatch.setenv(override_name("dev", name), value)
    gated = SimpleNamespace(
        reference=SimpleNamespace(name="mnist-8", model=SimpleNamespace(filename="mnist-8.onnx")),
        downloaded=SimpleNamespace(model_path=mnist8_path, sha256s={"model": MNIST8_SHA256}),
    )
    monkeypatch.setattr(deploy_module, "gate_model", lambda *args, **kwargs: gated)
    monkeypatch.setattr(deploy_module, "batched_copy", lambda *args, **kwargs: None)
    monkeypatch.setattr(deploy_module.images, "git_sha", lambda: "0" * 40)
    bucket = f"arn:aws:s3:::{CLUSTER}"
    reader = aws.user(
        "models-reader",
        [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{bucket}/models/*"},
            # Its records, as the deploy role reads them (latest.json, before the gate).
            {
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"{bucket}/deployments/dev/*",
            },
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket},
            # Its service, as the deploy role reads it (is it paused?, before the gate).
            {"Effect": "Allow", "Action": "ecs:DescribeServices", "Resource": "*"},
        ],
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", reader["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", reader["aws_secret_access_key"])
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it keeps the keys it first read

    with aws.enforcing_iam():
        status = cli.main(["deploy", "dev"])

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("deploy: ")]
    assert status == 2, err
    assert lines == [
        f"error: S3 refused s3:PutObject on {bucket}/models/{MNIST8_SHA256}/mnist-8.onnx "
        "(AccessDenied): the deploy role needs s3:PutObject on "
        f"{bucket}/models/* (terraform/modules/ci, listed in "
        "pipeline/aws_calls.py); apply the environment's Terraform, then deploy again"
    ]


def test_serve_runs_the_batch_capable_copy_a_deploy_ships(monkeypatch, tmp_path):
    """`nox -s serve` (cli serve) hands the service the copy a deploy would make, proven
    on the whole test set, so a local server runs batches as a deployed task does."""
    from pipeline.reference import load_reference
    from service.artifacts import sha256_of

    reference = load_reference()
    proved_on = []

    def batchable(model_path, inputs, target):  # the proof, seeing what it is shown
        proved_on.append(inputs)
        return batchable_copy(model_path, inputs, target)

    monkeypatch.setattr(deploy_module, "batchable_copy", batchable)
    copy = deploy_module.served_copy(reference, tmp_path)
    assert copy is not None and copy.images_checked == 10_000
    # Proven on the test images as the model takes them (model.toml's scale), not on
    # anything that merely has their shape.
    downloaded = download(reference)
    dataset = load_dataset(downloaded.images_path, downloaded.labels_path, reference.test_format)
    expected = scaled_inputs(
        dataset.images, np.dtype(np.float32), (1, 28, 28), reference.input_scale
    )
    (shown,) = proved_on
    assert shown.dtype == expected.dtype and np.array_equal(shown, expected)
    assert copy.max_abs_difference == 0.0 and copy.sha256 == sha256_of(copy.path)

    served = {}
    monkeypatch.setattr(cli, "served_copy", lambda reference: copy)
    monkeypatch.setattr(cli, "serve", lambda settings: served.setdefault("settings", settings))
    monkeypatch.setenv("PREDICTION_LOG_URL", "off")
    cli.main(["serve"])
    settings = served["settings"]
    assert settings.model_batched_url == str(copy.path)
    assert settings.model_batched_sha256 == copy.sha256
