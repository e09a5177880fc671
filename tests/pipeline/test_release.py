"""Releases against a moto ECS/S3 server, smoke-tested on a real local service."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import replace

import boto3
import pytest

from pipeline import interrupts, promotion, records
from pipeline import release as release_module
from pipeline.batchable import make_copy
from pipeline.environment import MissingEnvironment
from pipeline.release import (
    RELEASE_VARIABLES,
    Candidate,
    Ecs,
    Outcome,
    ReleaseError,
    SmokeImages,
    release,
    rollback,
    status,
    task_environment,
)
from tests.pipeline.awsfront import SILENT, THROTTLE, AwsFront
from tests.pipeline.environments import CLUSTER, FAMILY, SERVICE, make_environment, stored
from tests.service.conftest import MNIST8_SHA256, start_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def other_model_server(reference_files, tmp_path_factory):
    """A service answering with another model file (mnist-8's batch-capable copy: other
    bytes, another sha256): what a release that shipped the wrong model looks like."""
    model = make_copy(reference_files["model"], tmp_path_factory.mktemp("m") / "other.onnx")
    server = start_server(
        {
            "MODEL_URL": str(model),
            "MODEL_NAME": "mnist-8",
            "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("c")),
            "PREDICTION_LOG_URL": str(tmp_path_factory.mktemp("p")),
        }
    )
    yield server
    server.stop()


def candidate(git_sha: str = "a" * 40) -> Candidate:
    return Candidate(
        image=f"127.0.0.1:5000/onnx-ship-dev@sha256:{'1' * 64}",
        git_sha=git_sha,
        model_name="mnist-8",
        model_url="s3://onnx-ship-dev/models/mnist-8.onnx",
        model_sha256=MNIST8_SHA256,
        gate={"accuracy": 0.9891, "passed": True},
        # As a deploy gives it: the tag its success grants (the commit stands for its tree).
        provenance={"verified_tag": verified_tag(git_sha)},
    )


def verified_tag(git_sha: str) -> str:
    return promotion.verified_tag(git_sha, MNIST8_SHA256)


def tag(image: str, name: str) -> None:
    """Tag `image` (`<registry>/<repository>@<digest>`) `name` in moto's ECR, as a push of
    the same manifest under another tag does."""
    ecr = boto3.client("ecr")
    repository, _, digest = image.partition("@")
    repository = repository.partition("/")[2]
    (found,) = ecr.batch_get_image(repositoryName=repository, imageIds=[{"imageDigest": digest}])[
        "images"
    ]
    ecr.put_image(
        repositoryName=repository,
        imageManifest=found["imageManifest"],
        imageTag=name,
        imageDigest=digest,
    )


def tags_of(image: str) -> set[str]:
    """The tags moto's ECR holds on `image` (`<registry>/<repository>@<digest>`)."""
    repository, _, digest = image.partition("@")
    (found,) = boto3.client("ecr").describe_images(
        repositoryName=repository.partition("/")[2], imageIds=[{"imageDigest": digest}]
    )["imageDetails"]
    return set(found.get("imageTags", []))


def test_a_release_hands_the_model_labels_to_the_service():
    labelled = replace(candidate(), labels=("0", "1", "2"))
    assert task_environment(labelled)["MODEL_LABELS"] == '["0", "1", "2"]'
    # Always set, empty without labels, so labels of an earlier release never linger.
    assert task_environment(candidate())["MODEL_LABELS"] == ""


# The waits' bounds: moto completes an ECS deployment at once and the servers the smoke
# test calls are ready before a release starts, so seconds are plenty; a rollout or
# rollback that never completes fails the test within them, not after the defaults
# (15 minutes per deployment, 5 for the smoke test).
STABLE_SECONDS = 10.0
SMOKE_SECONDS = 10.0
BOUNDS = {"stable_timeout": STABLE_SECONDS, "smoke_timeout": SMOKE_SECONDS}


QUIET = {"say": lambda message: None}


def fast_ecs() -> Ecs:
    return Ecs(boto3.client("ecs"), poll_seconds=0.05)


def test_release_registers_a_revision_points_the_service_and_records_it(aws, mnist8_server, smoke):
    env = make_environment(mnist8_server.url)
    outcome = release(env, candidate(), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert outcome.succeeded, outcome.reason
    ecs = boto3.client("ecs")
    service = ecs.describe_services(cluster=CLUSTER, services=[SERVICE])["services"][0]
    assert service["taskDefinition"] == outcome.task_definition
    assert outcome.task_definition.endswith(f"{FAMILY}:2")
    definition = ecs.describe_task_definition(taskDefinition=outcome.task_definition)
    (container,) = definition["taskDefinition"]["containerDefinitions"]
    assert container["image"] == candidate().image
    assert "command" not in container, "the image's own command runs, not the placeholder's"
    variables = {v["name"]: v["value"] for v in container["environment"]}
    assert variables["MODEL_SHA256"] == MNIST8_SHA256
    assert variables["GIT_SHA"] == "a" * 40
    # Terraform owns every other variable: the release keeps them exactly.
    assert {k: v for k, v in variables.items() if k not in RELEASE_VARIABLES} == {
        "APP_ENV": "dev",
        "PORT": "8080",
        "PREDICTION_LOG_URL": "s3://onnx-ship-dev/capture",
    }
    assert definition["taskDefinition"]["taskRoleArn"].endswith("onnx-ship-dev-task")
    # ECS gives a revision's tags only when asked (DescribeTaskDefinition `include`): the
    # released revision keeps the ones Terraform's revision has.
    tagged = ecs.describe_task_definition(taskDefinition=outcome.task_definition, include=["TAGS"])
    assert tagged["tags"] == [
        {"key": "Project", "value": "onnx-ship"},
        {"key": "Environment", "value": "dev"},
    ]
    latest = records.read_latest(env.records_url)
    assert latest["outcome"] == "succeeded"
    assert latest["image"] == candidate().image and latest["git_sha"] == "a" * 40
    assert latest["task_definition"] == outcome.task_definition


def test_failed_smoke_test_rolls_back_to_the_last_release_and_records_why(
    aws, mnist8_server, other_model_server, smoke
):
    env = make_environment(mnist8_server.url)
    good = release(env, candidate("a" * 40), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert good.succeeded, good.reason
    serving_another_model = replace(env, endpoint_url=other_model_server.url)
    outcome = release(
        serving_another_model,
        candidate("b" * 40),
        smoke,
        ecs=fast_ecs(),
        say=lambda m: None,
        **BOUNDS,
    )
    assert not outcome.succeeded
    assert "sha256" in outcome.reason
    after = boto3.client("ecs").describe_services(cluster=CLUSTER, services=[SERVICE])["services"][
        0
    ]["taskDefinition"]
    assert after == good.task_definition
    assert records.read_latest(env.records_url)["git_sha"] == "a" * 40
    attempts = [r for r in records.list_records(env.records_url) if r["git_sha"] == "b" * 40]
    assert [(r["outcome"], "sha256" in r["reason"]) for r in attempts] == [("rolled_back", True)]


def test_a_failed_first_release_returns_to_the_revision_that_ran_before(
    aws, other_model_server, smoke
):
    """Before its first release the service runs Terraform's revision (the placeholder):
    a failed first release puts it back there rather than leaving a broken revision."""
    env = make_environment(other_model_server.url)
    ecs = boto3.client("ecs")
    before = ecs.describe_services(cluster=CLUSTER, services=[SERVICE])["services"][0]
    outcome = release(env, candidate(), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert not outcome.succeeded
    after = ecs.describe_services(cluster=CLUSTER, services=[SERVICE])["services"][0]
    assert after["taskDefinition"] == before["taskDefinition"] == env.task_definition_arn
    assert records.read_latest(env.records_url) is None
    (attempt,) = records.list_records(env.records_url)
    assert attempt["outcome"] == "rolled_back" and "sha256" in attempt["reason"]


class Cancelled(Ecs):
    """ECS as a release sees it when its GitHub job is cancelled, or reaches its
    timeout-minutes: the runner's SIGINT reaches this process during the wait number
    `at` (1: the release's own rollout, or a rollback's; 2: the rollback's after the
    rollout failed, as `failing` has it: the waits that fail), or during the UpdateService number
    `at_update`; the runner's SIGTERM (7.5 s later) comes during the next UpdateService
    ("Workflow cancellation reference")."""

    def __init__(
        self,
        at: int = 0,
        *,
        at_update: int = 0,
        failing: tuple[int, ...] = (),
        client: object = None,
    ) -> None:
        super().__init__(client or boto3.client("ecs"), poll_seconds=0.05)
        self.at, self.at_update, self.failing = at, at_update, failing
        self.waits = 0
        self.updates: list[str] = []
        self.signalled = False

    def update(self, cluster: str, service: str, task_definition: str) -> str:
        if self.signalled:
            os.kill(os.getpid(), signal.SIGTERM)
        self.updates.append(task_definition)
        if len(self.updates) == self.at_update:
            self.interrupt()
        return super().update(cluster, service, task_definition)

    def wait_for_rollout(self, *args) -> None:
        self.waits += 1
        if self.waits == self.at:
            self.interrupt()
            time.sleep(STABLE_SECONDS)
            raise AssertionError("the SIGINT did not interrupt the wait")
        if self.waits in self.failing:
            raise ReleaseError(f"deployment ecs-svc/{self.waits} is FAILED: the circuit breaker")
        super().wait_for_rollout(*args)

    def interrupt(self) -> None:
        self.signalled = True
        os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def interruptible():
    """Signals as `python -m pipeline` takes them (`pipeline.interrupts.handled`), SIGINT
    as a process started in the foreground has it."""
    assert threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with interrupts.handled():
            yield
    finally:
        signal.signal(signal.SIGINT, before)


def released_once(env, smoke: SmokeImages) -> Outcome:
    good = release(env, candidate("a" * 40), smoke, ecs=fast_ecs(), **QUIET, **BOUNDS)
    assert good.succeeded, good.reason
    return good


def service_revision() -> str:
    service = boto3.client("ecs").describe_services(cluster=CLUSTER, services=[SERVICE])
    return service["services"][0]["taskDefinition"]


def attempts(env, git_sha: str) -> list[dict]:
    return [r for r in records.list_records(env.records_url) if r["git_sha"] == git_sha]


def test_a_release_interrupted_during_its_rollout_points_the_service_back_and_records_it(
    aws, mnist8_server, smoke, interruptible
):
    """An interrupted release must not leave an unverified revision serving, nor go
    unrecorded: it starts the rollback without waiting for it (a runner kills the job
    10 s after its SIGINT), writes the record, and stops as interrupted. The runner's
    SIGTERM, arriving meanwhile, does not cut that short."""
    env = make_environment(mnist8_server.url)
    good = released_once(env, smoke)
    ecs = Cancelled(at=1)
    with pytest.raises(KeyboardInterrupt):
        release(env, candidate("b" * 40), smoke, ecs=ecs, **QUIET, **BOUNDS)
    released = ecs.updates[0]
    assert released != good.task_definition and ecs.updates == [released, good.task_definition]
    assert service_revision() == good.task_definition
    (attempt,) = attempts(env, "b" * 40)
    assert attempt["outcome"] == "failed" and attempt["task_definition"] == released
    assert attempt["reason"].startswith(
        "interrupted before the release was verified and the rollback to "
        f"{good.task_definition} started (deployment "
    )
    assert records.read_latest(env.records_url)["git_sha"] == "a" * 40


class BusyOnceCancelled(Cancelled):
    """A job cancelled during its first wait, after which the AWS service behind `front`
    throttles every call or answers none (`mode`)."""

    def __init__(self, front: AwsFront, mode: str, client: object = None) -> None:
        super().__init__(at=1, client=client)
        self.front, self.mode = front, mode
        self.interrupted_at = 0.0

    def interrupt(self) -> None:
        self.front.mode = self.mode
        self.interrupted_at = time.monotonic()
        super().interrupt()


@pytest.mark.parametrize("mode", [THROTTLE, SILENT])
def test_an_interrupted_release_is_done_before_the_runner_kills_it_when_ecs_is_busy(
    aws, mnist8_server, smoke, interruptible, monkeypatch, mode
):
    """A runner kills a cancelled step 10 s after its SIGINT. When ECS then throttles
    every call, or a connection stalls, the put-back gives up in time and the record
    still says what happened and what to do, instead of the job dying in botocore's
    retries (up to 9 tries, 20 s apart) or timeouts (60 s) with no record."""
    env = make_environment(mnist8_server.url)
    released_once(env, smoke)
    with AwsFront(aws.endpoint) as front:
        monkeypatch.setenv("AWS_ENDPOINT_URL_ECS", front.url)
        ecs = BusyOnceCancelled(front, mode, client=env.client("ecs"))  # the pipeline's own
        with pytest.raises(KeyboardInterrupt):
            release(env, candidate("b" * 40), smoke, ecs=ecs, **QUIET, **BOUNDS)
        took = time.monotonic() - ecs.interrupted_at
    assert took <= interrupts.GRACE_SECONDS
    (attempt,) = attempts(env, "b" * 40)
    assert attempt["outcome"] == "failed"
    reason = attempt["reason"]
    assert reason.startswith("interrupted before the release was verified and the rollback to ")
    assert "could not start" in reason and "deploy again" in reason
    assert ("ThrottlingException" if mode == THROTTLE else "Read timeout") in reason
    assert records.read_latest(env.records_url)["git_sha"] == "a" * 40


def test_an_interrupted_release_whose_record_s3_does_not_take_says_so_in_time(
    aws, mnist8_server, smoke, interruptible, monkeypatch
):
    """The service is pointed back; the record's PUT, to an S3 gone silent from the
    SIGINT on, gives up before the runner's kill and says so."""
    env = make_environment(mnist8_server.url)
    good = released_once(env, smoke)
    said: list[str] = []
    with AwsFront(aws.endpoint) as front:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", front.url)
        ecs = BusyOnceCancelled(front, SILENT)
        with pytest.raises(KeyboardInterrupt):
            release(env, candidate("b" * 40), smoke, ecs=ecs, say=said.append, **BOUNDS)
        took = time.monotonic() - ecs.interrupted_at
    assert took <= interrupts.GRACE_SECONDS
    assert service_revision() == good.task_definition
    (unwritten,) = [line for line in said if "record could not be written" in line]
    assert "AWS did not answer" in unwritten and front.requests[SILENT] >= 1


def test_a_failed_release_interrupted_during_its_rollback_keeps_why_it_failed(
    aws, mnist8_server, smoke, interruptible
):
    """The rollback has started: it is not started again, and the record says both why
    the release failed and that the rollback was not waited for."""
    env = make_environment(mnist8_server.url)
    good = released_once(env, smoke)
    ecs = Cancelled(at=2, failing=(1,))
    with pytest.raises(KeyboardInterrupt):
        release(env, candidate("b" * 40), smoke, ecs=ecs, **QUIET, **BOUNDS)
    assert ecs.updates[1:] == [good.task_definition]
    assert service_revision() == good.task_definition
    (attempt,) = attempts(env, "b" * 40)
    assert attempt["outcome"] == "failed"
    assert attempt["reason"] == (
        "deployment ecs-svc/1 is FAILED: the circuit breaker; then interrupted "
        f"while the rollback to {good.task_definition} ran, not waited for; nox -s status -- "
        "dev shows what runs"
    )


def test_an_interrupted_first_release_returns_to_the_revision_that_ran_before(
    aws, mnist8_server, smoke, interruptible
):
    env = make_environment(mnist8_server.url)
    with pytest.raises(KeyboardInterrupt):
        release(env, candidate(), smoke, ecs=Cancelled(at=1), **QUIET, **BOUNDS)
    assert service_revision() == env.task_definition_arn
    (attempt,) = records.list_records(env.records_url)
    assert attempt["outcome"] == "failed" and "interrupted" in attempt["reason"]
    assert records.read_latest(env.records_url) is None


@pytest.mark.parametrize("fail", [False, True], ids=["succeeded", "rolled-back"])
def test_an_interrupt_while_the_record_is_written_leaves_it_whole_and_unchanged(
    aws, mnist8_server, other_model_server, smoke, interruptible, monkeypatch, fail
):
    """The record's files are written whole (the attempt's, and latest.json for a
    success) and never rewritten: the interrupt is taken once they are."""
    env = make_environment(mnist8_server.url)
    good = released_once(env, smoke)
    if fail:  # the smoke test finds another model: the release rolls back
        env = replace(env, endpoint_url=other_model_server.url)
    write, writes = records.write, []

    def interrupted_write(url, record, **options):
        if not writes:
            os.kill(os.getpid(), signal.SIGINT)
        writes.append(record["outcome"])
        return write(url, record)

    monkeypatch.setattr(records, "write", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        release(env, candidate("b" * 40), smoke, ecs=fast_ecs(), **QUIET, **BOUNDS)
    assert writes == ["rolled_back" if fail else "succeeded"]
    (attempt,) = attempts(env, "b" * 40)
    latest = records.read_latest(env.records_url)
    if fail:
        assert attempt["outcome"] == "rolled_back" and latest["git_sha"] == "a" * 40
        assert service_revision() == good.task_definition
    else:
        assert attempt["outcome"] == "succeeded" and latest == attempt
        assert service_revision() == attempt["task_definition"]


def test_wrong_predictions_fail_the_smoke_test(aws, mnist8_server, smoke):
    env = make_environment(mnist8_server.url)
    lying = SmokeImages(smoke.images, [(c + 1) % 10 for c in smoke.classes])
    outcome = release(env, candidate(), lying, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert not outcome.succeeded
    assert "smoke test failed on 6/6 images" in outcome.reason


def test_unreachable_endpoint_fails_within_the_bound(aws, smoke):
    env = make_environment("http://127.0.0.1:9")
    outcome = release(
        env,
        candidate(),
        smoke,
        ecs=fast_ecs(),
        smoke_timeout=0.5,
        stable_timeout=STABLE_SECONDS,
        say=lambda m: None,
        sleep=lambda s: None,
    )
    assert not outcome.succeeded and "did not become ready" in outcome.reason


def test_rollback_returns_to_the_previous_successful_release_and_status_shows_it(
    aws, mnist8_server, smoke
):
    env = make_environment(mnist8_server.url)
    image = stored(candidate().image)
    first = release(env, candidate("a" * 40), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    second = release(env, candidate("b" * 40), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert first.succeeded and second.succeeded
    # Both verified (as mark_verified tags them): one image, built once, two trees' tags.
    for sha in ("a" * 40, "b" * 40):
        tag(image, verified_tag(sha))
    pushed = tags_of(image) - {verified_tag("a" * 40), verified_tag("b" * 40)}
    shown = status(env, ecs=fast_ecs())
    assert shown["git_sha"] == "b" * 40 and shown["in_sync"] and shown["health"] == "ready"
    assert shown["gate_accuracy"] == 0.9891
    restored = rollback(env, ecs=fast_ecs(), say=lambda m: None, stable_timeout=STABLE_SECONDS)
    assert restored["task_definition"] == first.task_definition
    assert restored["rollback_of"] == second.record["release_id"]
    service = boto3.client("ecs").describe_services(cluster=CLUSTER, services=[SERVICE])
    assert service["services"][0]["taskDefinition"] == first.task_definition
    shown = status(env, ecs=fast_ecs())
    assert shown["git_sha"] == "a" * 40 and shown["in_sync"]
    # The verification of what it left is withdrawn; the image, with its other tags, stays.
    assert tags_of(image) == {*pushed, verified_tag("a" * 40)}


@pytest.mark.parametrize("verdict", ["succeeded", "rolled_back", "failed"])
def test_an_interrupt_after_the_verdict_before_the_record_records_the_verdict(
    aws, mnist8_server, other_model_server, smoke, interruptible, monkeypatch, verdict
):
    """The release held, or failed and its rollback ended (completed, or not), and is
    interrupted before its record is written: that verdict is recorded, and nothing more
    is put back."""
    env = make_environment(mnist8_server.url)
    good = released_once(env, smoke)
    fail = verdict != "succeeded"
    if fail:  # the smoke test finds another model: the release rolls back
        env = replace(env, endpoint_url=other_model_server.url)
    finish = release_module._finish

    def interrupted_finish(*args, **options):
        monkeypatch.setattr(release_module, "_finish", finish)  # the signal comes once
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(STABLE_SECONDS)
        raise AssertionError("the SIGINT did not interrupt")

    monkeypatch.setattr(release_module, "_finish", interrupted_finish)
    ecs = Cancelled(failing=(2,) if verdict == "failed" else ())
    with pytest.raises(KeyboardInterrupt):
        release(env, candidate("b" * 40), smoke, ecs=ecs, **QUIET, **BOUNDS)
    (attempt,) = attempts(env, "b" * 40)
    assert attempt["outcome"] == verdict
    if fail:
        assert "sha256" in attempt["reason"] and ecs.updates[1:] == [good.task_definition]
        did_not = f"the rollback to {good.task_definition} did not complete: deployment "
        assert (did_not in attempt["reason"]) == (verdict == "failed")
    else:
        assert "reason" not in attempt and records.read_latest(env.records_url) == attempt
        assert service_revision() == attempt["task_definition"] and len(ecs.updates) == 1


def test_a_rollback_interrupted_before_it_points_the_service_back_says_what_to_do(
    aws, mnist8_server, smoke, interruptible, monkeypatch
):
    env = make_environment(mnist8_server.url)
    stored(candidate().image)
    release(env, candidate("a" * 40), smoke, ecs=fast_ecs(), **QUIET, **BOUNDS)
    second = release(env, candidate("b" * 40), smoke, ecs=fast_ecs(), **QUIET, **BOUNDS)
    withdraw = release_module._withdraw_verification

    def interrupted(*args):
        kept = withdraw(*args)
        os.kill(os.getpid(), signal.SIGINT)
        return kept

    monkeypatch.setattr(release_module, "_withdraw_verification", interrupted)
    said = []
    with pytest.raises(KeyboardInterrupt):
        rollback(env, ecs=fast_ecs(), say=said.append, stable_timeout=STABLE_SECONDS)
    assert service_revision() == second.task_definition
    assert records.read_latest(env.records_url) == second.record
    assert said[-1] == (
        f"interrupted before the service was pointed back: dev still runs "
        f"{second.record['release_id']}, whose verified tag may be withdrawn already; run "
        "nox -s rollback -- dev again"
    )


@pytest.mark.parametrize("latest_fails", [False, True], ids=["written", "latest-refused"])
def test_a_rollback_interrupted_while_its_record_is_written_is_recorded_once(
    aws, mnist8_server, smoke, interruptible, monkeypatch, latest_fails
):
    """The signal comes as the rollback's record is written: the record is written whole
    and once; when the write fails after the attempt's file (latest.json refused), the
    same record is written again, not a second rollback."""
    env = make_environment(mnist8_server.url)
    stored(candidate().image)
    first = release(env, candidate("a" * 40), smoke, ecs=fast_ecs(), **QUIET, **BOUNDS)
    second = release(env, candidate("b" * 40), smoke, ecs=fast_ecs(), **QUIET, **BOUNDS)
    assert first.succeeded and second.succeeded
    write = records.write

    def interrupted_write(url, record, **options):
        monkeypatch.setattr(records, "write", write)  # once
        os.kill(os.getpid(), signal.SIGINT)
        if latest_fails:
            name, body = f"{record['release_id']}.json", json.dumps(record).encode()
            records._write(url, name, body)
            raise records.RecordError("latest.json: access denied")
        return write(url, record)

    monkeypatch.setattr(records, "write", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        rollback(env, ecs=fast_ecs(), **QUIET, stable_timeout=STABLE_SECONDS)
    latest = records.read_latest(env.records_url)
    assert latest["task_definition"] == first.task_definition == service_revision()
    assert latest["rollback_of"] == second.record["release_id"] and "reason" not in latest
    rollbacks = [r for r in records.list_records(env.records_url) if "rollback_of" in r]
    assert [r["release_id"] for r in rollbacks] == [latest["release_id"]]


@pytest.mark.parametrize(
    "cancelled",
    [
        pytest.param({"at": 1}, id="during-its-wait"),
        pytest.param({"at_update": 1}, id="during-its-service-update"),
    ],
)
def test_an_interrupted_rollback_is_recorded_once_the_service_is_pointed_back(
    aws, mnist8_server, smoke, interruptible, cancelled
):
    """Ctrl-C during `nox -s rollback`'s wait: ECS carries on with the deployment, so the
    record says where the service goes, and a later failed release returns there, not
    to the release that was left."""
    env = make_environment(mnist8_server.url)
    stored(candidate().image)
    first = release(env, candidate("a" * 40), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    second = release(env, candidate("b" * 40), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert first.succeeded and second.succeeded
    with pytest.raises(KeyboardInterrupt):
        rollback(env, ecs=Cancelled(**cancelled), **QUIET, stable_timeout=STABLE_SECONDS)
    service = boto3.client("ecs").describe_services(cluster=CLUSTER, services=[SERVICE])
    assert service["services"][0]["taskDefinition"] == first.task_definition
    latest = records.read_latest(env.records_url)
    assert latest["task_definition"] == first.task_definition
    assert latest["rollback_of"] == second.record["release_id"]
    assert latest["reason"].startswith("interrupted: deployment ")


def test_an_interrupted_rollback_is_done_before_the_runner_kills_it_when_s3_stalls(
    aws, mnist8_server, smoke, interruptible, monkeypatch
):
    """The record of a rollback interrupted in its wait is written by the runner's kill,
    or said not to be: S3 answering nothing from the SIGINT on ends the PUT in time."""
    env = make_environment(mnist8_server.url)
    stored(candidate().image)
    for sha in ("a" * 40, "b" * 40):
        assert release(env, candidate(sha), smoke, ecs=fast_ecs(), **QUIET, **BOUNDS).succeeded
    said: list[str] = []
    with AwsFront(aws.endpoint) as front:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", front.url)
        ecs = BusyOnceCancelled(front, SILENT)
        with pytest.raises(KeyboardInterrupt):
            rollback(env, ecs=ecs, say=said.append, stable_timeout=STABLE_SECONDS)
        took = time.monotonic() - ecs.interrupted_at
    assert took <= interrupts.GRACE_SECONDS
    (unwritten,) = [line for line in said if "record could not be written" in line]
    assert "Read timeout" in unwritten and "AWS did not answer" in unwritten
    assert front.requests[SILENT] >= 1


def test_rollback_to_a_release_whose_image_ecr_expired_leaves_the_service_as_it_is(
    aws, mnist8_server, smoke
):
    env = make_environment(mnist8_server.url)
    for sha in ("a" * 40, "b" * 40):
        stored(image_of(sha).image)
        shipped = release(env, image_of(sha), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
        assert shipped.succeeded, shipped.reason
    expired = image_of("a" * 40).image.partition("@")[2]
    boto3.client("ecr").batch_delete_image(
        repositoryName=FAMILY, imageIds=[{"imageDigest": expired}]
    )
    with pytest.raises(ReleaseError, match="no longer in the onnx-ship-dev repository"):
        rollback(env, ecs=fast_ecs(), say=lambda m: None, stable_timeout=STABLE_SECONDS)
    service = boto3.client("ecs").describe_services(cluster=CLUSTER, services=[SERVICE])
    assert service["services"][0]["taskDefinition"] == shipped.task_definition


def test_rollback_without_history_says_so(aws, mnist8_server):
    env = make_environment(mnist8_server.url)
    with pytest.raises(ReleaseError, match="no earlier successful release"):
        rollback(env, ecs=fast_ecs(), say=lambda m: None, stable_timeout=STABLE_SECONDS)


def test_missing_service_is_a_clear_error(aws, smoke):
    env = make_environment("http://127.0.0.1:9")
    boto3.client("ecs").delete_service(cluster=CLUSTER, service=SERVICE, force=True)
    with pytest.raises(ReleaseError, match="terraform apply"):
        release(env, candidate(), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)


def test_a_release_starts_from_terraforms_revision_not_the_running_one(aws, mnist8_server, smoke):
    """A Terraform change to the task (here: memory) reaches the service with the next
    release, even though the service runs a revision the pipeline registered."""
    env = make_environment(mnist8_server.url)
    stored(candidate().image)
    first = release(env, candidate("a" * 40), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert first.succeeded, first.reason
    ecs = boto3.client("ecs")
    terraforms = ecs.describe_task_definition(taskDefinition=env.task_definition_arn)
    changed = {
        k: v
        for k, v in terraforms["taskDefinition"].items()
        if k in ("family", "containerDefinitions", "requiresCompatibilities", "networkMode")
    }
    applied = ecs.register_task_definition(**changed, cpu="1024", memory="2048")
    env = replace(env, task_definition_arn=applied["taskDefinition"]["taskDefinitionArn"])
    second = release(env, candidate("b" * 40), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert second.succeeded, second.reason
    shipped = ecs.describe_task_definition(taskDefinition=second.task_definition)["taskDefinition"]
    assert (shipped["cpu"], shipped["memory"]) == ("1024", "2048")
    assert shipped["containerDefinitions"][0]["image"] == candidate("b" * 40).image


def test_the_environments_region_is_used_whatever_the_ambient_region(
    aws, mnist8_server, smoke, monkeypatch
):
    """The cluster is in the environment's region (us-east-1); a workflow or shell whose
    AWS_DEFAULT_REGION names another region still releases to the right cluster."""
    env = make_environment(mnist8_server.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    outcome = release(env, candidate(), smoke, say=lambda m: None, **BOUNDS)
    assert outcome.succeeded, outcome.reason
    assert status(env)["in_sync"]


# -- a service that requires a bearer token ------------------------------------------

TOKEN = "pT7-vQ2_xZ9kL4mN8bR3cW6s"


@pytest.fixture(scope="module")
def protected_server(reference_files, tmp_path_factory):
    """mnist-8 with API_TOKENS set, as ECS starts it with the secret injected."""
    server = start_server(
        {
            "MODEL_URL": str(reference_files["model"]),
            "MODEL_SHA256": MNIST8_SHA256,
            "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("c")),
            "PREDICTION_LOG_URL": "off",
            "API_TOKENS": f"{TOKEN}\nrotated-token-0123456789",
        }
    )
    yield server
    server.stop()


def with_token_secret(env, secret_string: str = f"{TOKEN}\nrotated-token-0123456789"):
    arn = boto3.client("secretsmanager").create_secret(
        Name="onnx-ship-dev-api-tokens", SecretString=secret_string
    )["ARN"]
    return replace(env, api_token_secret_arn=arn)


def test_release_and_status_present_the_token_read_from_the_secret(aws, protected_server, smoke):
    env = with_token_secret(make_environment(protected_server.url))
    assert env.api_token() == TOKEN
    outcome = release(env, candidate(), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert outcome.succeeded, outcome.reason
    shown = status(env, ecs=fast_ecs())
    assert shown["health"] == "ready"
    assert shown["serving"] == f"mnist-8 sha256 {MNIST8_SHA256} (token accepted)"


def test_a_protected_service_without_the_token_fails_the_smoke_test_and_rolls_back(
    aws, protected_server, smoke
):
    env = make_environment(protected_server.url)  # no api_token_secret_arn
    outcome = release(env, candidate(), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert not outcome.succeeded
    assert "requires a bearer token (HTTP 401)" in outcome.reason


def test_a_wrong_token_in_the_secret_fails_the_smoke_test(aws, protected_server, smoke):
    env = with_token_secret(make_environment(protected_server.url), "not-the-token-0123456789")
    outcome = release(env, candidate(), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert not outcome.succeeded and "refused the pipeline's token" in outcome.reason


def test_a_service_serving_without_authentication_fails_when_the_environment_has_a_token(
    aws, mnist8_server, smoke
):
    env = with_token_secret(make_environment(mnist8_server.url))
    outcome = release(env, candidate(), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert not outcome.succeeded
    assert "does not require authentication" in outcome.reason


def test_an_unreadable_token_secret_stops_the_release_before_anything_changes(aws, smoke):
    env = make_environment("http://127.0.0.1:9")
    missing = replace(
        env,
        api_token_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:gone-AbCdEf",
    )
    with pytest.raises(MissingEnvironment, match="secretsmanager:GetSecretValue"):
        release(missing, candidate(), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    service = boto3.client("ecs").describe_services(cluster=CLUSTER, services=[SERVICE])
    assert service["services"][0]["taskDefinition"] == env.task_definition_arn
    assert records.list_records(env.records_url) == []


# -- the scheduled compaction runs the image of the last successful release -------------

COMPACTION_FAMILY = f"{FAMILY}-compaction"
COMPACTION_ROLE = "arn:aws:iam::123456789012:role/onnx-ship-dev-compaction"


def with_compaction(env):
    """The environment as Terraform outputs it: the schedule's family and task role."""
    return replace(
        env, compaction_task_family=COMPACTION_FAMILY, compaction_role_arn=COMPACTION_ROLE
    )


def image_of(git_sha: str) -> Candidate:
    """A candidate whose image differs with its commit."""
    image = f"127.0.0.1:5000/onnx-ship-dev@sha256:{git_sha[0] * 64}"
    return replace(candidate(git_sha), image=image)


def compaction_runs() -> dict:
    """What the schedule starts: the compaction family's latest ACTIVE revision."""
    return boto3.client("ecs").describe_task_definition(taskDefinition=COMPACTION_FAMILY)[
        "taskDefinition"
    ]


def test_a_successful_release_gives_the_scheduled_compaction_its_image_command_and_role(
    aws, mnist8_server, smoke
):
    env = with_compaction(make_environment(mnist8_server.url))
    outcome = release(env, image_of("a" * 40), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert outcome.succeeded, outcome.reason
    runs = compaction_runs()
    assert runs["taskDefinitionArn"] == outcome.record["compaction_task_definition"]
    assert runs["taskRoleArn"] == COMPACTION_ROLE
    released = boto3.client("ecs").describe_task_definition(taskDefinition=outcome.task_definition)
    assert runs["executionRoleArn"] == released["taskDefinition"]["executionRoleArn"]
    assert (runs["cpu"], runs["memory"]) == ("512", "1024")
    (container,) = runs["containerDefinitions"]
    assert container["image"] == image_of("a" * 40).image
    assert container["command"] == [
        "python", "-m", "pipeline.predictions.compact", "dev",
        "--url", "s3://onnx-ship-dev/capture", "--since", "2d",
    ]  # fmt: skip
    assert "portMappings" not in container or container["portMappings"] == []
    variables = {v["name"]: v["value"] for v in container["environment"]}
    assert variables["PREDICTION_LOG_URL"] == "s3://onnx-ship-dev/capture"


def test_an_interrupt_while_compaction_follows_the_release_keeps_both_on_its_image(
    aws, mnist8_server, smoke, interruptible, monkeypatch
):
    """Once compaction is pointed at the released image, the release has held: an
    interrupt then is taken after that step and records the release, so the schedule never
    runs an image the service was put back from."""
    env = with_compaction(make_environment(mnist8_server.url))
    follow = release_module._follow_with_compaction

    def interrupted(*args):
        os.kill(os.getpid(), signal.SIGINT)
        return follow(*args)

    monkeypatch.setattr(release_module, "_follow_with_compaction", interrupted)
    ecs = Cancelled()
    with pytest.raises(KeyboardInterrupt):
        release(env, image_of("a" * 40), smoke, ecs=ecs, **QUIET, **BOUNDS)
    (attempt,) = records.list_records(env.records_url)
    assert attempt["outcome"] == "succeeded" and len(ecs.updates) == 1
    assert service_revision() == attempt["task_definition"]
    assert compaction_runs()["containerDefinitions"][0]["image"] == image_of("a" * 40).image


def test_a_release_that_rolls_back_leaves_compaction_on_the_last_good_image(
    aws, mnist8_server, other_model_server, smoke
):
    """The failed release registered a service revision for its image; the compaction
    family gets none, so the schedule still runs the image that passed."""
    env = with_compaction(make_environment(mnist8_server.url))
    good = release(env, image_of("a" * 40), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert good.succeeded, good.reason
    bad = release(
        replace(env, endpoint_url=other_model_server.url),
        image_of("b" * 40),
        smoke,
        ecs=fast_ecs(),
        say=lambda m: None,
        **BOUNDS,
    )
    assert not bad.succeeded
    ecs = boto3.client("ecs")
    failed = ecs.describe_task_definition(taskDefinition=bad.task_definition)["taskDefinition"]
    assert failed["containerDefinitions"][0]["image"] == image_of("b" * 40).image
    runs = compaction_runs()
    assert runs["taskDefinitionArn"] == good.record["compaction_task_definition"]
    assert runs["containerDefinitions"][0]["image"] == image_of("a" * 40).image


def test_a_failed_first_release_registers_no_compaction_revision(aws, other_model_server, smoke):
    env = with_compaction(make_environment(other_model_server.url))
    outcome = release(env, image_of("a" * 40), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert not outcome.succeeded
    listed = boto3.client("ecs").list_task_definitions(familyPrefix=COMPACTION_FAMILY)
    assert listed["taskDefinitionArns"] == []


def test_rollback_puts_compaction_back_on_the_restored_release(aws, mnist8_server, smoke):
    env = with_compaction(make_environment(mnist8_server.url))
    for sha in ("a" * 40, "b" * 40):
        stored(image_of(sha).image)
        shipped = release(env, image_of(sha), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
        assert shipped.succeeded, shipped.reason
    assert compaction_runs()["containerDefinitions"][0]["image"] == image_of("b" * 40).image
    restored = rollback(env, ecs=fast_ecs(), say=lambda m: None, stable_timeout=STABLE_SECONDS)
    runs = compaction_runs()
    assert runs["taskDefinitionArn"] == restored["compaction_task_definition"]
    assert runs["containerDefinitions"][0]["image"] == image_of("a" * 40).image


def test_a_terraform_change_to_the_service_leaves_compaction_on_the_released_image(
    aws, mnist8_server, smoke
):
    """`terraform apply` after a task change registers a service revision running the
    placeholder; the compaction family, which Terraform never registers, is untouched."""
    env = with_compaction(make_environment(mnist8_server.url))
    shipped = release(env, image_of("a" * 40), smoke, ecs=fast_ecs(), say=lambda m: None, **BOUNDS)
    assert shipped.succeeded, shipped.reason
    ecs = boto3.client("ecs")
    terraforms = ecs.describe_task_definition(taskDefinition=env.task_definition_arn)
    kept = ("family", "containerDefinitions", "requiresCompatibilities", "networkMode")
    applied = ecs.register_task_definition(
        **{k: v for k, v in terraforms["taskDefinition"].items() if k in kept},
        cpu="1024",
        memory="2048",
    )["taskDefinition"]
    assert applied["containerDefinitions"][0]["image"].startswith("public.ecr.aws/")
    runs = compaction_runs()
    assert runs["taskDefinitionArn"] == shipped.record["compaction_task_definition"]
    assert runs["containerDefinitions"][0]["image"] == image_of("a" * 40).image


def test_without_a_compaction_family_the_release_says_it_leaves_the_schedule(
    aws, mnist8_server, smoke
):
    said: list[str] = []
    env = make_environment(mnist8_server.url)
    outcome = release(env, candidate(), smoke, ecs=fast_ecs(), say=said.append, **BOUNDS)
    assert outcome.succeeded, outcome.reason
    assert "no compaction_task_family output: the scheduled compaction is left as it is" in said
    assert outcome.record["compaction_task_definition"] == ""


def test_the_compaction_family_and_role_come_from_their_outputs_or_variables():
    from pipeline.environment import REQUIRED, resolve

    outputs = {name: f"{name}-value" for name in REQUIRED}
    applied = {
        **outputs,
        "compaction_task_family": COMPACTION_FAMILY,
        "compaction_role_arn": COMPACTION_ROLE,
    }
    env = resolve("dev", terraform_outputs=lambda e: applied, environ={})
    assert (env.compaction_task_family, env.compaction_role_arn) == (
        COMPACTION_FAMILY,
        COMPACTION_ROLE,
    )
    given = resolve(
        "dev",
        terraform_outputs=lambda e: applied,
        environ={"DEV_COMPACTION_TASK_FAMILY": "other-compaction"},
    )
    assert given.compaction_task_family == "other-compaction"
    older = resolve("dev", terraform_outputs=lambda e: outputs, environ={})
    assert (older.compaction_task_family, older.compaction_role_arn) == ("", "")
