"""A deploy's decisions, in-process: S3 and ECR in moto's in-process `mock_aws` (no socket)
or scripted with botocore's Stubber, the container CLI's steps (build, login, pull, push)
replaced by recorders, and the gate's result made to order.

The integration tests (test_deploy.py, test_workflow.py, test_image*.py) run the same code
with podman, a registry and a moto server; these check what each step is given and what
it answers, fast enough to run for every mutant of pipeline/deploy.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber
from moto import mock_aws

from pipeline import REPO, promotion
from pipeline import deploy as deploy_module
from pipeline import image as images
from pipeline import registry as registries
from pipeline.batchable import BatchableCopy, NotBatchable
from pipeline.deploy import (
    DeployError,
    SmokeImages,
    batched_copy,
    build_and_push,
    deploy,
    mark_verified,
    promote,
    publish_model,
    smoke_images,
    source_repository,
)
from pipeline.environment import Environment
from pipeline.release import Candidate, Outcome, ReleaseError
from service.store import StoreError
from tests.service.conftest import MNIST8_SHA256

ACCOUNT = "123456789012"
REGISTRY = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"
BUCKET = "models-bucket"
SHA = "a" * 40
TREE = "e" * 40
DIGEST = "sha256:" + "d" * 64


def environment(name: str = "dev", **changes) -> Environment:
    made = Environment(
        environment=name,
        aws_region="us-east-1",
        cluster_name=f"onnx-ship-{name}",
        service_name=f"onnx-ship-{name}",
        task_family=f"onnx-ship-{name}",
        task_definition_arn=f"arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/onnx-ship-{name}:1",
        container_name="service",
        ecr_repository_url=f"{REGISTRY}/onnx-ship-{name}",
        capture_url=f"s3://{BUCKET}/capture",
        deployments_url=f"s3://{BUCKET}/deployments",
        models_url=f"s3://{BUCKET}/models",
        endpoint_url="http://127.0.0.1:9",
    )
    return Environment(**{**made.__dict__, **changes})


def gated_stand_in(model_path: Path, filename: str = "mnist-8.onnx", **more) -> SimpleNamespace:
    """What deploy takes from a passed gate (pipeline.gating.Gated)."""
    return SimpleNamespace(
        reference=SimpleNamespace(
            name="mnist-8", model=SimpleNamespace(filename=filename), labels=("zero", "one")
        ),
        downloaded=SimpleNamespace(model_path=model_path, sha256s={"model": MNIST8_SHA256}),
        **more,
    )


@pytest.fixture
def moto_in_process(monkeypatch) -> Iterator[None]:
    """moto in this process: S3 and ECR answer without any socket."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_ECR"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield


@dataclass
class Cli:
    """The container CLI steps deploy drives (pipeline.image and pipeline.registry),
    recorded; `available` are the references a pull finds."""

    available: set[str] = field(default_factory=set)
    calls: list[tuple] = field(default_factory=list)
    cli: images.ContainerCli = field(
        default_factory=lambda: images.ContainerCli("podman", "/usr/bin/podman")
    )

    def install(self, monkeypatch) -> Cli:
        monkeypatch.setattr(images, "find_cli", lambda: self.cli)
        monkeypatch.setattr(images, "build", self.build)
        monkeypatch.setattr(images, "default_ca_bundle", lambda: Path("/etc/ca.pem"))
        monkeypatch.setattr(registries, "login", self.login)
        monkeypatch.setattr(registries, "pull", self.pull)
        monkeypatch.setattr(registries, "push", self.push)
        monkeypatch.setattr(promotion, "git_tree", self.git_tree)
        return self

    def build(self, tag_repo, git_sha, model_sha256, base_image, *, ca_bundle):
        self.calls.append(("build", tag_repo, git_sha, model_sha256, base_image, ca_bundle))
        return f"{tag_repo}:{git_sha}"

    def login(self, cli, registry, credentials):
        assert cli is self.cli
        self.calls.append(("login", registry, credentials.username, bool(credentials.password)))

    def pull(self, cli, registry, reference):
        assert cli is self.cli
        self.calls.append(("pull", registry, reference))
        return reference in self.available

    def push(self, image, repository_url, tag, *, ecr, cli=None):
        assert isinstance(ecr, registries.Ecr)
        self.calls.append(("push", image, repository_url, tag, cli is self.cli))
        return DIGEST

    def git_tree(self, commit, repo):
        assert (commit, repo) == (SHA, REPO)
        return TREE


@pytest.fixture
def cli(monkeypatch) -> Cli:
    return Cli().install(monkeypatch)


# -- the smoke images and the batch-capable copy -------------------------------------


def test_smoke_images_are_the_first_correctly_classified_of_the_first_200():
    labels = np.array([i % 10 for i in range(300)])
    predicted = labels.copy()
    predicted[[0, 2, 5]] += 1  # wrong
    inputs = np.arange(300, dtype=np.float32).reshape(300, 1)
    gated = SimpleNamespace(
        result=SimpleNamespace(evaluation=SimpleNamespace(predicted=predicted)),
        dataset=SimpleNamespace(labels=labels),
        inputs=inputs,
    )
    chosen = smoke_images(gated, count=4)
    assert chosen.images.ravel().tolist() == [1, 3, 4, 6]
    assert chosen.classes == [1, 3, 4, 6]
    assert all(isinstance(c, int) for c in chosen.classes)
    assert len(smoke_images(gated).classes) == 8  # the default
    # Only the first 200 are candidates.
    predicted[:200] += 1
    assert smoke_images(gated).classes == []
    short = SimpleNamespace(
        result=SimpleNamespace(evaluation=SimpleNamespace(predicted=labels[:3])),
        dataset=SimpleNamespace(labels=labels[:3]),
        inputs=inputs[:3],
    )
    assert smoke_images(short).classes == [0, 1, 2]


def test_a_model_that_takes_batches_needs_no_copy():
    gated = SimpleNamespace(model=SimpleNamespace(batch_fixed_at_one=False))
    assert batched_copy(gated) is None


def test_a_batch_one_model_gets_a_copy_proven_on_the_inputs(
    mnist8_path, mnist_test_set, tmp_path, capsys
):
    images_, _ = mnist_test_set
    inputs = images_[:20].reshape(20, 1, 28, 28).astype(np.float32)
    gated = gated_stand_in(
        mnist8_path, model=SimpleNamespace(batch_fixed_at_one=True), inputs=inputs
    )
    copy = batched_copy(gated, tmp_path)
    assert copy is not None and copy.path == tmp_path / "mnist-8.batched.onnx"
    assert copy.images_checked == 20
    assert capsys.readouterr().err == (
        f"deploy: batch-capable copy {copy.sha256[:12]} answers as the model on all "
        "20 test images\n"
    )


def test_a_model_that_cannot_be_batched_runs_one_row_at_a_time(
    mnist8_path, tmp_path, monkeypatch, capsys
):
    def refuse(model_path, inputs, target):
        assert (model_path, target) == (mnist8_path, tmp_path / "mnist-8.batched.onnx")
        raise NotBatchable("a Reshape fixes the batch")

    monkeypatch.setattr(deploy_module, "batchable_copy", refuse)
    gated = gated_stand_in(mnist8_path, model=SimpleNamespace(batch_fixed_at_one=True), inputs=None)
    assert batched_copy(gated, tmp_path) is None
    assert capsys.readouterr().err == (
        "deploy: no batch-capable copy (a Reshape fixes the batch); batches run one row at a time\n"
    )


# -- publishing the model --------------------------------------------------------------


def s3_object(key: str) -> bytes:
    return (
        boto3.client("s3", region_name="us-east-1")
        .get_object(Bucket=BUCKET, Key=key)["Body"]
        .read()
    )


def test_the_model_and_its_copy_are_published_under_the_models_sha256(
    moto_in_process, mnist8_path, tmp_path, capsys
):
    copy_path = tmp_path / "copy.onnx"
    copy_path.write_bytes(b"batched copy")
    batched = BatchableCopy(copy_path, "b" * 64, 10, 0.0)
    model_url, batched_url = publish_model(environment(), gated_stand_in(mnist8_path), batched)
    assert model_url == f"s3://{BUCKET}/models/{MNIST8_SHA256}/mnist-8.onnx"
    assert batched_url == f"s3://{BUCKET}/models/{MNIST8_SHA256}/batched-{'b' * 64}.onnx"
    assert s3_object(f"models/{MNIST8_SHA256}/mnist-8.onnx") == mnist8_path.read_bytes()
    assert s3_object(f"models/{MNIST8_SHA256}/batched-{'b' * 64}.onnx") == b"batched copy"
    assert (
        capsys.readouterr().err == f"deploy: uploaded {model_url}\ndeploy: uploaded {batched_url}\n"
    )
    # Published once: a second deploy finds it and uploads nothing.
    copy_path.write_bytes(b"another copy")
    assert publish_model(environment(), gated_stand_in(mnist8_path), batched) == (
        model_url,
        batched_url,
    )
    assert s3_object(f"models/{MNIST8_SHA256}/batched-{'b' * 64}.onnx") == b"batched copy"
    assert capsys.readouterr().err == (
        f"deploy: already at {model_url}\ndeploy: already at {batched_url}\n"
    )


def test_the_published_name_is_the_files_or_the_models(moto_in_process, mnist8_path):
    env = environment()
    nested = gated_stand_in(mnist8_path, filename="models/v2/digits.onnx")
    assert publish_model(env, nested, None) == (
        f"s3://{BUCKET}/models/{MNIST8_SHA256}/digits.onnx",
        "",
    )
    unnamed = gated_stand_in(mnist8_path, filename="")
    assert (
        publish_model(env, unnamed, None)[0] == f"s3://{BUCKET}/models/{MNIST8_SHA256}/mnist-8.onnx"
    )


@pytest.mark.parametrize("url", ["/srv/models", "ftp://host/models"])
def test_a_models_url_that_is_not_s3_is_named(url, mnist8_path):
    with pytest.raises(DeployError) as raised:
        publish_model(environment(models_url=url), gated_stand_in(mnist8_path), None)
    assert str(raised.value) == f"models_url {url!r} must be an s3:// URL"


def test_a_models_url_without_a_bucket_is_named(mnist8_path):
    with pytest.raises(DeployError) as raised:
        publish_model(environment(models_url="s3://"), gated_stand_in(mnist8_path), None)
    assert str(raised.value).startswith("models_url: ")
    assert "bucket" in str(raised.value)


@contextmanager
def scripted_s3(*errors: tuple[str, str, int]) -> Iterator[Stubber]:
    """Environment.client("s3") answers each call in turn with an S3 error."""
    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    stubber = Stubber(client)
    for operation, code, status in errors:
        stubber.add_client_error(operation, code, "refused", status)
    with stubber, mock.patch.object(Environment, "client", lambda env, name: client):
        yield stubber
        stubber.assert_no_pending_responses()


def test_a_refused_lookup_names_the_read_grant(mnist8_path):
    with scripted_s3(("head_object", "403", 403)), pytest.raises(DeployError) as raised:
        publish_model(environment(), gated_stand_in(mnist8_path), None)
    assert str(raised.value) == (
        f"S3 refused s3:GetObject on arn:aws:s3:::{BUCKET}/models/{MNIST8_SHA256}/mnist-8.onnx "
        "(403): the deploy role needs s3:GetObject on "
        f"arn:aws:s3:::{BUCKET}/models/* (terraform/modules/ci, listed in "
        "pipeline/aws_calls.py); apply the environment's Terraform, then deploy again"
    )


def test_a_refused_upload_names_the_write_grant(mnist8_path):
    refusals = (("head_object", "404", 404), ("put_object", "AccessDenied", 403))
    with scripted_s3(*refusals), pytest.raises(DeployError) as raised:
        publish_model(environment(), gated_stand_in(mnist8_path), None)
    assert str(raised.value).startswith(
        f"S3 refused s3:PutObject on arn:aws:s3:::{BUCKET}/models/{MNIST8_SHA256}/mnist-8.onnx "
        "(AccessDenied): the deploy role needs s3:PutObject on "
        f"arn:aws:s3:::{BUCKET}/models/* (terraform/modules/ci"
    )


@pytest.mark.parametrize("code", ["AccessDenied", "403", "Forbidden"])
def test_every_form_of_access_denied_names_the_grant(code):
    error = deploy_module._refused(
        "s3:PutObject", "_publish", BUCKET, "models/k", StoreError("no", code=code)
    )
    assert f"({code}): the deploy role needs s3:PutObject on arn:aws:s3:::{BUCKET}/models/*" in str(
        error
    )


def test_any_other_refusal_is_one_line_with_s3s_words():
    error = deploy_module._refused(
        "s3:PutObject",
        "_publish",
        BUCKET,
        "models/k",
        StoreError("Please reduce\n   your request rate.", code="SlowDown"),
    )
    assert str(error) == (
        f"S3 refused s3:PutObject on arn:aws:s3:::{BUCKET}/models/k (SlowDown): "
        "Please reduce your request rate."
    )


def unreachable_s3(env, name):
    """An S3 client whose endpoint refuses connections (a closed loopback port), no retry."""
    return boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2),
    )


def test_an_unreachable_s3_is_named_with_the_url(mnist8_path):
    with (
        mock.patch.object(Environment, "client", unreachable_s3),
        pytest.raises(DeployError) as raised,
    ):
        publish_model(environment(), gated_stand_in(mnist8_path), None)
    assert str(raised.value).startswith(
        f"could not reach S3 to publish s3://{BUCKET}/models/{MNIST8_SHA256}/mnist-8.onnx: "
    )


def test_an_s3_lost_during_the_upload_is_named_with_the_url(mnist8_path, monkeypatch):
    from service.store import S3Store, StoreUnreachable

    def lost(self, key, source):
        raise StoreUnreachable("connection reset")

    monkeypatch.setattr(S3Store, "exists", lambda self, key: False)
    monkeypatch.setattr(S3Store, "upload_file", lost)
    with (
        mock.patch.object(Environment, "client", unreachable_s3),
        pytest.raises(DeployError) as raised,
    ):
        publish_model(environment(), gated_stand_in(mnist8_path), None)
    assert str(raised.value) == (
        f"could not reach S3 to publish s3://{BUCKET}/models/{MNIST8_SHA256}/mnist-8.onnx: "
        "connection reset"
    )


# -- the image: built, reused or promoted ----------------------------------------------


def put_image(repository: str, tag: str) -> str:
    ecr = boto3.client("ecr", region_name="us-east-1")
    manifest = (
        '{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",'
        ' "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,'
        f' "digest": "sha256:{"c" * 64}"}}, "layers": []}}'
    )
    ecr.put_image(repositoryName=repository, imageManifest=manifest, imageTag=tag)
    return ecr.describe_images(repositoryName=repository)["imageDetails"][0]["imageDigest"]


def create_repository(name: str) -> None:
    boto3.client("ecr", region_name="us-east-1").create_repository(repositoryName=name)


def test_a_new_commit_is_built_and_pushed(moto_in_process, cli, mnist8_path, monkeypatch):
    create_repository("onnx-ship-dev")
    monkeypatch.setenv("BASE_IMAGE", "python:3.12-slim")
    image = build_and_push(environment(), gated_stand_in(mnist8_path), SHA)
    assert image == f"{REGISTRY}/onnx-ship-dev@{DIGEST}"
    assert cli.calls == [
        ("build", "onnx-ship", SHA, MNIST8_SHA256, "python:3.12-slim", Path("/etc/ca.pem")),
        ("push", f"onnx-ship:{SHA}", f"{REGISTRY}/onnx-ship-dev", SHA, False),
    ]
    monkeypatch.delenv("BASE_IMAGE")
    build_and_push(environment(), gated_stand_in(mnist8_path), SHA)
    assert cli.calls[2][4] == images.DEFAULT_BASE_IMAGE


def test_a_commit_already_pushed_is_reused(moto_in_process, cli, mnist8_path, capsys):
    create_repository("onnx-ship-dev")
    pushed = put_image("onnx-ship-dev", SHA)
    put_image("onnx-ship-dev", "b" * 40)
    gated = gated_stand_in(mnist8_path)
    assert build_and_push(environment(), gated, SHA) == f"{REGISTRY}/onnx-ship-dev@{pushed}"
    assert cli.calls == []
    assert capsys.readouterr().err == (
        f"deploy: reusing {REGISTRY}/onnx-ship-dev:{SHA} ({pushed}), pushed by an earlier run\n"
    )


def test_a_tree_and_model_released_before_ship_that_image(
    moto_in_process, cli, mnist8_path, capsys
):
    """A new commit of a tree this environment released with this model (an empty commit,
    a revert of a revert) ships the verified image, not a new build, nor this commit's
    image a failed run pushed: the release runs what a promoting environment ships, and
    the registry keeps it as a released image."""
    create_repository("onnx-ship-dev")
    tag = promotion.verified_tag(TREE, MNIST8_SHA256)
    verified = put_image("onnx-ship-dev", tag)
    put_image("onnx-ship-dev", SHA)  # this commit, pushed by a run whose release failed
    gated = gated_stand_in(mnist8_path)
    assert build_and_push(environment(), gated, SHA) == f"{REGISTRY}/onnx-ship-dev@{verified}"
    assert cli.calls == []
    assert capsys.readouterr().err == (
        f"deploy: reusing {REGISTRY}/onnx-ship-dev:{tag} ({verified}), released for this code "
        "and model\n"
    )
    # Another model on the same code is not what was released.
    gated.downloaded.sha256s["model"] = "f" * 64
    build_and_push(environment(), gated, SHA)
    assert capsys.readouterr().err.endswith("pushed by an earlier run\n")


def test_the_source_repository_is_the_variable_when_set(monkeypatch):
    monkeypatch.setenv("DEV_ECR_REPOSITORY_URL", "127.0.0.1:5000/elsewhere")
    monkeypatch.setattr(deploy_module, "terraform_outputs", pytest.fail)
    assert source_repository(environment("prod"), "dev") == "127.0.0.1:5000/elsewhere"


def test_the_source_repository_is_named_by_terraform_in_promotion_order(monkeypatch):
    monkeypatch.delenv("DEV_ECR_REPOSITORY_URL", raising=False)
    monkeypatch.delenv("QA_ECR_REPOSITORY_URL", raising=False)
    asked = []

    def outputs(name):
        asked.append(name)
        return {"promote_from_repository_names": ["onnx-ship-dev", "onnx-ship-qa"]}

    monkeypatch.setattr(deploy_module, "terraform_outputs", outputs)
    prod = environment("prod", promote_from=("dev", "qa"))
    assert source_repository(prod, "qa") == f"{REGISTRY}/onnx-ship-qa"
    assert source_repository(prod, "dev") == f"{REGISTRY}/onnx-ship-dev"
    assert asked == ["prod", "prod"]
    # A list that does not match the environments one to one: its first name.
    one = environment("prod", promote_from=("dev", "qa", "uat"))
    assert source_repository(one, "qa") == f"{REGISTRY}/onnx-ship-dev"
    assert source_repository(environment("prod", promote_from=("dev",)), "qa") == (
        f"{REGISTRY}/onnx-ship-dev"
    )


def test_no_source_repository_says_where_to_name_one(monkeypatch):
    monkeypatch.delenv("DEV_ECR_REPOSITORY_URL", raising=False)
    for outputs in ({}, {"promote_from_repository_names": None}):
        monkeypatch.setattr(deploy_module, "terraform_outputs", lambda name, o=outputs: o)
        with pytest.raises(DeployError) as raised:
            source_repository(environment("prod", promote_from=("dev",)), "dev")
        assert str(raised.value) == (
            "prod promotes from no repository: set promote_from_environments in "
            "terraform/envs/prod/terraform.tfvars, or DEV_ECR_REPOSITORY_URL"
        )


SOURCE_URL = f"{REGISTRY}/onnx-ship-dev"
VERIFIED = f"{SOURCE_URL}:{promotion.verified_tag(TREE, MNIST8_SHA256)}"


def test_promotion_ships_the_image_the_source_verified(
    moto_in_process, cli, mnist8_path, monkeypatch, capsys
):
    monkeypatch.delenv("DEPLOY_UNVERIFIED", raising=False)
    cli.available.add(VERIFIED)
    image, chosen = promote(
        environment("prod"), "dev", SOURCE_URL, gated_stand_in(mnist8_path), SHA, cli=cli.cli
    )
    assert image == f"{REGISTRY}/onnx-ship-prod@{DIGEST}"
    assert chosen == promotion.Provenance("dev", promotion.verified_tag(TREE, MNIST8_SHA256))
    assert cli.calls == [
        ("login", REGISTRY, "AWS", True),
        ("pull", REGISTRY, VERIFIED),
        ("push", VERIFIED, f"{REGISTRY}/onnx-ship-prod", SHA, True),
    ]
    assert capsys.readouterr().err == f"deploy: promoting {VERIFIED}, verified on dev\n"


def test_promotion_finds_the_cli_itself(moto_in_process, cli, mnist8_path, monkeypatch):
    monkeypatch.delenv("DEPLOY_UNVERIFIED", raising=False)
    cli.available.add(VERIFIED)
    promote(environment("prod"), "dev", SOURCE_URL, gated_stand_in(mnist8_path), SHA)
    assert cli.calls[-1][-1] is True  # pushed with the CLI images.find_cli gave


def test_promotion_of_what_the_source_never_verified_stops(
    moto_in_process, cli, mnist8_path, monkeypatch
):
    monkeypatch.delenv("DEPLOY_UNVERIFIED", raising=False)
    with pytest.raises(DeployError) as raised:
        promote(environment("prod"), "dev", SOURCE_URL, gated_stand_in(mnist8_path), SHA)
    assert str(raised.value) == (
        "dev never verified this code with this model, or a rollback there withdrew it "
        f"(tree {TREE[:12]}, model {MNIST8_SHA256[:12]}): deploy commit {SHA[:12]} to dev "
        "first (merge it into dev and push), then deploy prod again; or set "
        "DEPLOY_UNVERIFIED=true to build an unverified image for prod (its deployment "
        "record says so)"
    )
    assert [c[0] for c in cli.calls] == ["login", "pull"]


def test_an_unverified_promotion_builds_when_asked_to(
    moto_in_process, cli, mnist8_path, monkeypatch, capsys
):
    create_repository("onnx-ship-prod")
    monkeypatch.setenv("DEPLOY_UNVERIFIED", "true")
    image, chosen = promote(
        environment("prod"), "dev", SOURCE_URL, gated_stand_in(mnist8_path), SHA, cli=cli.cli
    )
    assert image == f"{REGISTRY}/onnx-ship-prod@{DIGEST}"
    assert chosen.unverified and chosen.record()["unverified"] is True
    assert [c[0] for c in cli.calls] == ["login", "pull", "build", "push"]
    assert cli.calls[-1][2] == f"{REGISTRY}/onnx-ship-prod"
    assert capsys.readouterr().err.startswith(
        "deploy: warning: DEPLOY_UNVERIFIED is set: building an image for prod that dev "
        "never verified\n"
    )


def test_a_released_image_is_tagged_verified_in_the_registry(moto_in_process, cli, capsys):
    """The tag is put on the released digest itself ("Retagging an image in Amazon ECR"):
    no pull, no push, so no container CLI re-serialises the manifest into another digest,
    one the task definition does not run and the lifecycle's `verified-` rule would keep
    instead of the released one."""
    create_repository("onnx-ship-dev")
    digest = put_image("onnx-ship-dev", SHA)
    released = f"{REGISTRY}/onnx-ship-dev@{digest}"
    tag = mark_verified(environment(), released, SHA, MNIST8_SHA256)
    assert tag == promotion.verified_tag(TREE, MNIST8_SHA256)
    assert cli.calls == []
    ecr = boto3.client("ecr", region_name="us-east-1")
    (image,) = ecr.batch_get_image(repositoryName="onnx-ship-dev", imageIds=[{"imageTag": tag}])[
        "images"
    ]
    assert image["imageId"]["imageDigest"] == digest
    (details,) = ecr.describe_images(repositoryName="onnx-ship-dev")["imageDetails"]
    assert set(details["imageTags"]) == {SHA, tag}
    assert capsys.readouterr().err == f"deploy: tagged {released} as {tag}\n"


def test_a_tree_and_model_verified_by_an_earlier_image_stay_so(moto_in_process, cli, capsys):
    """A new commit of a tree dev verified (an empty commit, a revert of a revert): its
    release succeeds and the tag keeps the earlier image, rather than failing the deploy
    on the immutable tag."""
    create_repository("onnx-ship-dev")
    tag = promotion.verified_tag(TREE, MNIST8_SHA256)
    earlier = put_image("onnx-ship-dev", tag)
    released = f"{REGISTRY}/onnx-ship-dev@sha256:{'d' * 64}"
    assert mark_verified(environment(), released, SHA, MNIST8_SHA256) == tag
    assert cli.calls == []
    assert capsys.readouterr().err == (
        f"deploy: {tag} names {REGISTRY}/onnx-ship-dev@{earlier} already, an earlier image of "
        "this tree and model: it stays the verified one (tags are immutable)\n"
    )
    # A re-run of the very release that tagged it: nothing to do either.
    assert mark_verified(environment(), f"{REGISTRY}/onnx-ship-dev@{earlier}", SHA, MNIST8_SHA256)
    assert cli.calls == []
    assert capsys.readouterr().err == (
        f"deploy: {REGISTRY}/onnx-ship-dev@{earlier} is tagged {tag} already\n"
    )


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def test_the_retag_puts_back_the_manifest_as_the_repository_holds_it():
    """moto's PutImage checks neither the media type nor the digest: ECR's does (a
    manifest without a `mediaType` needs imageManifestMediaType; a digest that does not
    match is refused), so the call is checked against botocore's model with Stubber."""
    client = boto3.client(
        "ecr", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    manifest = '{"schemaVersion":2,"config":{"digest":"sha256:' + "c" * 64 + '"},"layers":[]}'
    tag = promotion.verified_tag(TREE, MNIST8_SHA256)
    stubber = Stubber(client)
    stubber.add_response(
        "batch_get_image",
        {
            "images": [
                {
                    "repositoryName": "onnx-ship-dev",
                    "imageId": {"imageDigest": DIGEST},
                    "imageManifest": manifest,
                    "imageManifestMediaType": OCI_MANIFEST,
                }
            ],
            "failures": [],
        },
        {
            "repositoryName": "onnx-ship-dev",
            "imageIds": [{"imageDigest": DIGEST}],
            "acceptedMediaTypes": ANY,
        },
    )
    stubber.add_response(
        "put_image",
        {"image": {"imageId": {"imageDigest": DIGEST, "imageTag": tag}}},
        {
            "repositoryName": "onnx-ship-dev",
            "imageManifest": manifest,
            "imageManifestMediaType": OCI_MANIFEST,
            "imageTag": tag,
            "imageDigest": DIGEST,
        },
    )
    with stubber:
        registries.Ecr(client).retag("onnx-ship-dev", DIGEST, tag)
    stubber.assert_no_pending_responses()


def test_a_tag_another_run_put_meanwhile_stays_and_the_release_goes_on(
    moto_in_process, cli, monkeypatch, capsys
):
    """Two runs of one tree (a re-run beside a new commit of it) both look the tag up
    free; the second retag is refused, as tags are immutable (moto does not refuse it,
    so ECR's refusal is scripted here), and the earlier image stays the verified one."""
    create_repository("onnx-ship-dev")
    tag = promotion.verified_tag(TREE, MNIST8_SHA256)
    earlier = put_image("onnx-ship-dev", tag)
    released = f"{REGISTRY}/onnx-ship-dev@{DIGEST}"
    looked = []

    def existing(self, repository_name, asked):
        looked.append(asked)
        return None if len(looked) == 1 else registries.RemoteImage(earlier, None)

    def retag(self, repository_name, digest, asked):
        raise ClientError(
            {"Error": {"Code": "ImageTagAlreadyExistsException", "Message": "immutable"}},
            "PutImage",
        )

    monkeypatch.setattr(registries.Ecr, "existing", existing)
    monkeypatch.setattr(registries.Ecr, "retag", retag)
    assert mark_verified(environment(), released, SHA, MNIST8_SHA256) == tag
    assert looked == [tag, tag]
    assert capsys.readouterr().err == (
        f"deploy: {tag} names {REGISTRY}/onnx-ship-dev@{earlier} already, an earlier image of "
        "this tree and model: it stays the verified one (tags are immutable)\n"
    )


def test_a_released_image_the_registry_no_longer_holds_is_named(moto_in_process, cli):
    create_repository("onnx-ship-dev")
    released = f"{REGISTRY}/onnx-ship-dev@{DIGEST}"
    with pytest.raises(images.ImageError) as raised:
        mark_verified(environment(), released, SHA, MNIST8_SHA256)
    assert str(raised.value) == (
        f"onnx-ship-dev@{DIGEST} is not in the repository any more (its lifecycle policy may "
        f"have expired it): cannot tag it {promotion.verified_tag(TREE, MNIST8_SHA256)}"
    )


# -- the whole deploy --------------------------------------------------------------------


@dataclass
class Steps:
    """deploy()'s steps after the gate, recorded."""

    env: Environment
    gated: SimpleNamespace
    outcome: Outcome | None = None
    released: list[tuple[Candidate, SmokeImages]] = field(default_factory=list)
    verified: list[tuple] = field(default_factory=list)
    gate_calls: list[dict] = field(default_factory=list)
    paused_checks: list[Environment] = field(default_factory=list)


def install_steps(monkeypatch, steps: Steps, batched: BatchableCopy | None) -> None:
    def resolve(name):
        assert name == steps.env.environment
        return steps.env

    monkeypatch.setattr(deploy_module, "resolve", resolve)
    monkeypatch.setattr(deploy_module, "refuse_paused", steps.paused_checks.append)

    def load_reference(environ):
        assert environ is os.environ
        return "the reference"

    monkeypatch.setattr(deploy_module, "load_reference", load_reference)

    def gate(reference, **kwargs):
        assert reference == "the reference"
        steps.gate_calls.append(kwargs)
        return steps.gated

    monkeypatch.setattr(deploy_module, "gate_model", gate)

    def copy(gated):
        assert gated is steps.gated
        return batched

    monkeypatch.setattr(deploy_module, "batched_copy", copy)
    monkeypatch.setattr(images, "git_sha", lambda: SHA)

    def release(env, candidate, smoke, *, say):
        assert env is steps.env and say is deploy_module.say
        steps.released.append((candidate, smoke))
        return steps.outcome

    monkeypatch.setattr(deploy_module, "release", release)
    monkeypatch.setattr(
        deploy_module, "mark_verified", lambda *args: steps.verified.append(args) or "tag"
    )


def passed_gate(model_path: Path) -> SimpleNamespace:
    labels = np.arange(10)
    return gated_stand_in(
        model_path,
        result=SimpleNamespace(
            evaluation=SimpleNamespace(predicted=labels), record=lambda: {"accuracy": 0.99}
        ),
        dataset=SimpleNamespace(labels=labels),
        inputs=np.arange(10, dtype=np.float32).reshape(10, 1),
    )


def test_a_deploy_gates_publishes_builds_releases_and_tags(
    moto_in_process, cli, mnist8_path, monkeypatch, tmp_path
):
    create_repository("onnx-ship-dev")
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(b"copy")
    batched = BatchableCopy(copy, "b" * 64, 10000, 0.0)
    steps = Steps(environment(), passed_gate(mnist8_path))
    steps.outcome = Outcome({"release_id": "r1"}, "td:2", "td:1", True)
    install_steps(monkeypatch, steps, batched)
    assert deploy("dev") == {"release_id": "r1"}
    assert steps.gate_calls == [
        {
            "environment": "dev",
            "deployments_url": steps.env.deployments_url,
            "say": deploy_module.say,
        }
    ]
    image = f"{REGISTRY}/onnx-ship-dev@{DIGEST}"
    ((candidate, smoke),) = steps.released
    assert candidate == Candidate(
        image=image,
        git_sha=SHA,
        model_name="mnist-8",
        model_url=f"s3://{BUCKET}/models/{MNIST8_SHA256}/mnist-8.onnx",
        model_sha256=MNIST8_SHA256,
        gate={"accuracy": 0.99},
        batched_url=f"s3://{BUCKET}/models/{MNIST8_SHA256}/batched-{'b' * 64}.onnx",
        batched_sha256="b" * 64,
        labels=("zero", "one"),
        # What its success tags it (mark_verified) and a rollback from it withdraws.
        provenance={"verified_tag": promotion.verified_tag(TREE, MNIST8_SHA256)},
    )
    assert smoke.classes == list(range(8))
    assert steps.verified == [(steps.env, image, SHA, MNIST8_SHA256)]
    assert steps.paused_checks == [steps.env]


def test_a_deploy_to_a_paused_environment_stops_before_the_gate(
    moto_in_process, cli, mnist8_path, monkeypatch
):
    steps = Steps(environment(), passed_gate(mnist8_path))
    install_steps(monkeypatch, steps, None)

    def paused(env):
        raise ReleaseError(f"{env.environment} is paused")

    monkeypatch.setattr(deploy_module, "refuse_paused", paused)
    with pytest.raises(ReleaseError, match="dev is paused"):
        deploy("dev")
    assert steps.gate_calls == [] and steps.released == []


def test_a_deploy_without_a_batched_copy_releases_none(
    moto_in_process, cli, mnist8_path, monkeypatch
):
    create_repository("onnx-ship-dev")
    steps = Steps(environment(), passed_gate(mnist8_path))
    steps.outcome = Outcome({"release_id": "r1"}, "td:2", "td:1", True)
    install_steps(monkeypatch, steps, None)
    deploy("dev")
    ((candidate, _),) = steps.released
    assert (candidate.batched_url, candidate.batched_sha256) == ("", "")


def test_a_promoting_deploy_records_where_its_image_comes_from(
    moto_in_process, cli, mnist8_path, monkeypatch
):
    monkeypatch.delenv("DEPLOY_UNVERIFIED", raising=False)
    monkeypatch.delenv("DEV_ECR_REPOSITORY_URL", raising=False)
    monkeypatch.setattr(
        deploy_module,
        "terraform_outputs",
        lambda name: {"promote_from_repository_names": ["onnx-ship-dev"]},
    )
    cli.available.add(VERIFIED)
    steps = Steps(environment("prod", promote_from=("dev",)), passed_gate(mnist8_path))
    steps.outcome = Outcome({"release_id": "r2"}, "td:2", "td:1", True)
    install_steps(monkeypatch, steps, None)
    deploy("prod")
    ((candidate, _),) = steps.released
    assert candidate.image == f"{REGISTRY}/onnx-ship-prod@{DIGEST}"
    assert candidate.provenance == {
        "promoted_from": "dev",
        "verified_tag": promotion.verified_tag(TREE, MNIST8_SHA256),
    }
    assert not any(call[0] == "build" for call in cli.calls)


def test_a_rolled_back_release_fails_the_deploy_and_tags_nothing(
    moto_in_process, cli, mnist8_path, monkeypatch
):
    create_repository("onnx-ship-dev")
    steps = Steps(environment(), passed_gate(mnist8_path))
    steps.outcome = Outcome({}, "td:2", "td:1", False, "smoke test failed")
    install_steps(monkeypatch, steps, None)
    with pytest.raises(DeployError) as raised:
        deploy("dev")
    assert str(raised.value) == "release to dev rolled back: smoke test failed"
    assert steps.verified == []


def write_latest(env: Environment, record: dict) -> None:
    """The environment's latest.json: a release record with `record`'s keys."""
    record = {
        "release_id": "r0",
        "model_sha256": MNIST8_SHA256,
        "gate": {"accuracy": 0.99},
        **record,
    }
    boto3.client("s3", region_name="us-east-1").put_object(
        Bucket=BUCKET, Key="deployments/dev/latest.json", Body=json.dumps(record).encode()
    )


def test_a_commit_older_than_the_running_release_is_refused_before_anything_runs(
    moto_in_process, cli, mnist8_path, monkeypatch
):
    """A deploy that waited behind a later push, or a re-run of an old run: the running
    release's commit holds this one in its history, so this deploy would put older code
    back. Refused before the gate, with the way back on purpose."""
    steps = Steps(environment(), passed_gate(mnist8_path))
    install_steps(monkeypatch, steps, None)
    later = "c" * 40
    write_latest(steps.env, {"outcome": "succeeded", "git_sha": later})
    asked = []
    monkeypatch.setattr(deploy_module.history, "contains", lambda *args: asked.append(args) or True)
    with pytest.raises(DeployError) as refused:
        deploy("dev")
    assert asked == [(later, SHA, REPO)]
    assert str(refused.value) == (
        f"dev runs {later[:12]}, a later commit whose history holds {SHA[:12]}: deploying this "
        "one would put older code back (a deploy that waited behind a later push, or a re-run "
        "of an old run). Nothing was changed. To go back on purpose: nox -s rollback -- dev, "
        "or push a revert commit"
    )
    assert steps.gate_calls == [] and steps.released == []


@pytest.mark.parametrize(
    ("latest", "contains", "warned"),
    [
        ({"outcome": "succeeded", "git_sha": SHA}, None, False),  # a re-run of this push
        ({"outcome": "succeeded", "git_sha": "c" * 40}, False, False),  # not later
        ({"outcome": "rolled_back", "git_sha": "c" * 40}, True, False),  # not what runs
        ({"outcome": "succeeded", "git_sha": "c" * 40}, None, True),  # a shallow checkout
    ],
)
def test_a_commit_that_is_not_older_deploys(
    moto_in_process, cli, mnist8_path, monkeypatch, capsys, latest, contains, warned
):
    create_repository("onnx-ship-dev")
    steps = Steps(environment(), passed_gate(mnist8_path))
    steps.outcome = Outcome({"release_id": "r1"}, "td:2", "td:1", True)
    install_steps(monkeypatch, steps, None)
    write_latest(steps.env, latest)
    monkeypatch.setattr(deploy_module.history, "contains", lambda *args: contains)
    assert deploy("dev") == {"release_id": "r1"}
    assert (
        "cannot tell whether dev's release of cccccccccccc" in capsys.readouterr().err
    ) is warned
