"""A release's decisions, in-process: ECS scripted with botocore's Stubber (every request and
answer validated against ECS's service model), deployment records in a directory, and the
service's real ASGI app answering the smoke test through urllib (tests/pipeline/inprocess.py).

The integration tests (test_release.py, test_rollout.py) run the same code against moto and
uvicorn servers; these check each answer, record and message exactly, fast enough to run
for every mutant of pipeline/release.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from unittest import mock

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from botocore.stub import ANY, Stubber

from pipeline import REPO, promotion, records
from pipeline import release as release_module
from pipeline.alarms import (
    AlarmState,
    DeploymentAlarms,
    bake_seconds,
    moved_to_alarm,
    watched_alarms,
)
from pipeline.environment import Environment, MissingEnvironment
from pipeline.registry import Ecr
from pipeline.release import (
    RELEASE_VARIABLES,
    Candidate,
    Ecs,
    ReleaseError,
    SmokeImages,
    format_status,
    refusal,
    refuse_paused,
    release,
    release_id,
    rollback,
    smoke_test,
    status,
    task_environment,
    transient,
)
from service.app import create_app
from tests.pipeline.inprocess import Clock, Endpoints
from tests.pipeline.test_rollout import (
    ACCOUNT,
    AFTER,
    BEFORE,
    BOOTSTRAP,
    CIRCUIT_BREAKER,
    CLUSTER,
    EVENTS,
    FAMILY,
    NEXT,
    PULL_FAILED,
    RELEASED,
    SERVICE,
    UPDATED_AT,
    ScriptedEcs,
    deployment,
    environment,
    offline_client,
    service,
    with_events,
)
from tests.service.conftest import MNIST8_SHA256, model, settings  # noqa: F401 (fixtures)

HOST = "svc.test"
BASE = f"http://{HOST}"
TOKEN = "t0ken-for-the-smoke-test-0123456789"
OTHER_SHA256 = "0" * 64
IMAGE = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/onnx-ship-dev@sha256:{'1' * 64}"


@pytest.fixture
def endpoints():
    with Endpoints().installed() as served:
        yield served


@pytest.fixture
def app(settings, model):  # noqa: F811 (fixtures)
    return create_app(settings, model=model)


@pytest.fixture
def protected_app(settings, model):  # noqa: F811 (fixtures)
    return create_app(replace(settings, api_tokens=(TOKEN,)), model=model)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(release_module, "time", clock.as_time_module())
    return clock


@pytest.fixture
def scripted():
    ecs = ScriptedEcs()
    with ecs.stubber:
        yield ecs
        ecs.stubber.assert_no_pending_responses()


def candidate(git_sha: str = "a" * 40, **changes) -> Candidate:
    made = Candidate(
        image=IMAGE,
        git_sha=git_sha,
        model_name="mnist-8",
        model_url=f"s3://bucket/models/{MNIST8_SHA256}/mnist-8.onnx",
        model_sha256=MNIST8_SHA256,
        gate={"accuracy": 0.9891, "passed": True},
    )
    return replace(made, **changes)


# -- names and variables -------------------------------------------------------------


def test_a_release_id_is_the_utc_second_and_the_short_sha():
    moment = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert release_id("0123456789abcdef0123", moment) == "20260304T050607Z-0123456789ab"
    made = release_id("fedcba9876543210")
    assert made.endswith("Z-fedcba987654")
    assert len(made) == len("20260304T050607Z-") + 12


def test_a_release_id_is_utc_whatever_the_local_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: no hour in common with UTC
    time.tzset()
    try:
        before = datetime.now(UTC).strftime("%Y%m%dT%H")
        made = release_id("fedcba9876543210")
        after = datetime.now(UTC).strftime("%Y%m%dT%H")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert made[:11] in (before, after)


def test_the_task_environment_is_exactly_the_release_variables():
    labelled = candidate(
        batched_url="s3://bucket/models/x/batched-y.onnx", batched_sha256="b" * 64, labels=("a",)
    )
    assert task_environment(labelled) == {
        "MODEL_URL": labelled.model_url,
        "MODEL_SHA256": MNIST8_SHA256,
        "MODEL_NAME": "mnist-8",
        "MODEL_BATCHED_URL": "s3://bucket/models/x/batched-y.onnx",
        "MODEL_BATCHED_SHA256": "b" * 64,
        "MODEL_LABELS": '["a"]',
        "GIT_SHA": "a" * 40,
    }
    assert tuple(task_environment(candidate())) == RELEASE_VARIABLES
    assert task_environment(candidate())["MODEL_BATCHED_URL"] == ""
    assert task_environment(candidate())["MODEL_BATCHED_SHA256"] == ""
    assert task_environment(candidate())["MODEL_LABELS"] == ""


# -- ECS calls: what is sent ------------------------------------------------------------

BASE_TASK = {
    "family": FAMILY,
    "taskDefinitionArn": BOOTSTRAP,
    "revision": 1,
    "status": "ACTIVE",
    "taskRoleArn": f"arn:aws:iam::{ACCOUNT}:role/task",
    "executionRoleArn": f"arn:aws:iam::{ACCOUNT}:role/execution",
    "networkMode": "awsvpc",
    "volumes": [],
    "placementConstraints": [],
    "requiresCompatibilities": ["FARGATE"],
    "cpu": "512",
    "memory": "1024",
    "runtimePlatform": {"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"},
    "ephemeralStorage": {"sizeInGiB": 21},
    "containerDefinitions": [
        {
            "name": "server",
            "image": "onnx-ship-dev:bootstrap",
            "command": ["python", "-c", "placeholder"],
            "environment": [
                {"name": "APP_ENV", "value": "dev"},
                {"name": "MODEL_NAME", "value": "old"},
            ],
        },
        {"name": "sidecar", "image": "agent:1", "command": ["agent"]},
    ],
}


# The tags Terraform gives the revisions it registers (the provider's default_tags).
TAGS = [{"key": "Project", "value": "onnx-ship"}, {"key": "Environment", "value": "dev"}]


def expect_register(
    scripted: ScriptedEcs,
    base: dict,
    revision: str,
    sent: dict,
    base_arn: str = BOOTSTRAP,
    tags: list[dict[str, str]] = TAGS,
) -> None:
    """DescribeTaskDefinition of `base_arn` with its tags (ECS answers them only when asked:
    `include=["TAGS"]`), then RegisterTaskDefinition of `sent` with those tags."""
    scripted.stubber.add_response(
        "describe_task_definition",
        {"taskDefinition": base, "tags": tags},
        {"taskDefinition": base_arn, "include": ["TAGS"]},
    )
    scripted.stubber.add_response(
        "register_task_definition",
        {"taskDefinition": {"taskDefinitionArn": revision, "family": FAMILY}},
        {**sent, "tags": tags} if tags else sent,
    )
    confirm(scripted, revision)


def confirm(scripted: ScriptedEcs, revision: str, not_found: int = 0) -> None:
    """DescribeTaskDefinition of the new revision: ECS not finding it `not_found` times
    (its API is eventually consistent), then finding it."""
    for _ in range(not_found):
        scripted.stubber.add_client_error(
            "describe_task_definition",
            "ClientException",
            "Unable to describe task definition.",
            400,
            expected_params={"taskDefinition": revision},
        )
    scripted.stubber.add_response(
        "describe_task_definition",
        {"taskDefinition": {"taskDefinitionArn": revision, "family": FAMILY, "status": "ACTIVE"}},
        {"taskDefinition": revision},
    )


# The task-level fields of BASE_TASK every new revision sends again (the empty ones
# dropped; the family and task role are each revision's own).
BASE_KEPT = {
    "executionRoleArn": BASE_TASK["executionRoleArn"],
    "networkMode": "awsvpc",
    "requiresCompatibilities": ["FARGATE"],
    "cpu": "512",
    "memory": "1024",
    "runtimePlatform": BASE_TASK["runtimePlatform"],
    "ephemeralStorage": {"sizeInGiB": 21},
}


def registered_request(environment: dict[str, str]) -> dict:
    """What register sends for BASE_TASK: its fields but the empty ones, the server's image
    and variables replaced, its placeholder command gone, the sidecar untouched."""
    merged = {"APP_ENV": "dev", "MODEL_NAME": "old", **environment}
    return {
        "family": FAMILY,
        "taskRoleArn": BASE_TASK["taskRoleArn"],
        **BASE_KEPT,
        "containerDefinitions": [
            {
                "name": "server",
                "image": IMAGE,
                "environment": [{"name": k, "value": v} for k, v in sorted(merged.items())],
            },
            {"name": "sidecar", "image": "agent:1", "command": ["agent"]},
        ],
    }


def test_register_replaces_the_image_and_variables_and_keeps_every_other_field(scripted):
    variables = {"MODEL_NAME": "mnist-8", "GIT_SHA": "a" * 40}
    expect_register(scripted, BASE_TASK, NEXT, registered_request(variables))
    assert scripted.ecs().register(BOOTSTRAP, "server", IMAGE, variables) == NEXT


def register_next(scripted: ScriptedEcs, *looks: str) -> tuple[Ecs, list[float]]:
    """Script a register of NEXT from BOOTSTRAP whose first looks at the new revision ECS
    answers with these error codes; the Ecs to call, and the waits it will make."""
    scripted.stubber.add_response(
        "describe_task_definition",
        {"taskDefinition": BASE_TASK},
        {"taskDefinition": BOOTSTRAP, "include": ["TAGS"]},
    )
    scripted.stubber.add_response(
        "register_task_definition",
        {"taskDefinition": {"taskDefinitionArn": NEXT, "family": FAMILY}},
    )
    for code in looks:
        scripted.stubber.add_client_error("describe_task_definition", code, "Unable to describe.")
    waits: list[float] = []
    return Ecs(scripted.client, sleep=waits.append), waits


def test_a_new_revision_ecs_does_not_find_yet_is_looked_for_again_before_it_is_used(scripted):
    """The ECS API is eventually consistent: a revision just registered may not be found
    for a moment, and an UpdateService naming it would fail."""
    ecs, waits = register_next(scripted, "ClientException", "ClientException")
    confirm(scripted, NEXT)
    assert ecs.register(BOOTSTRAP, "server", IMAGE, {}) == NEXT
    assert waits == [1.0, 2.0]


def test_a_new_revision_still_not_found_after_the_waits_stops_the_release_unchanged(scripted):
    waits_allowed = release_module.CONFIRM_WAITS_SECONDS
    ecs, waits = register_next(scripted, *["ClientException"] * (len(waits_allowed) + 1))
    with pytest.raises(ReleaseError) as raised:
        ecs.register(BOOTSTRAP, "server", IMAGE, {})
    assert waits == list(waits_allowed)
    assert str(raised.value).startswith(f"ECS registered {NEXT} but still does not find it")
    assert str(raised.value).endswith("run the deploy again")


def test_a_refused_look_at_the_new_revision_is_raised_not_waited_out(scripted):
    ecs, waits = register_next(scripted, "AccessDeniedException")
    with pytest.raises(ClientError, match="AccessDenied"):
        ecs.register(BOOTSTRAP, "server", IMAGE, {})
    assert waits == []


def test_register_without_the_container_names_the_output_to_check(scripted):
    scripted.stubber.add_response(
        "describe_task_definition",
        {"taskDefinition": BASE_TASK},
        {"taskDefinition": BOOTSTRAP, "include": ["TAGS"]},
    )
    with pytest.raises(ReleaseError) as raised:
        scripted.ecs().register(BOOTSTRAP, "web", IMAGE, {})
    assert str(raised.value) == (
        f"task definition {BOOTSTRAP} has no container 'web'; check the "
        "environment's container_name output"
    )


def test_update_points_the_service_and_answers_the_primary_deployment(scripted):
    ours = deployment("ecs-svc/0002", NEXT, "PRIMARY", "IN_PROGRESS")
    old = deployment("ecs-svc/0001", RELEASED, "ACTIVE", "COMPLETED")
    scripted.stubber.add_response(
        "update_service",
        {"service": service(NEXT, old, ours)},
        {"cluster": CLUSTER, "service": SERVICE, "taskDefinition": NEXT},
    )
    scripted.stubber.add_response(
        "update_service",
        {"service": service(NEXT, old)},
        {"cluster": CLUSTER, "service": SERVICE, "taskDefinition": NEXT},
    )
    ecs = scripted.ecs()
    assert ecs.update(CLUSTER, SERVICE, NEXT) == "ecs-svc/0002"
    assert ecs.update(CLUSTER, SERVICE, NEXT) == ""


def test_a_service_missing_from_the_answer_is_not_active(scripted):
    scripted.stubber.add_response("describe_services", {"failures": []})
    with pytest.raises(ReleaseError, match=f"ECS service {SERVICE!r} is not active"):
        scripted.ecs().service(CLUSTER, SERVICE)


# -- waiting for a rollout, on a virtual clock -------------------------------------------


def test_the_wait_asks_until_its_bound_then_names_deployment_and_bound(scripted, clock):
    going = service(RELEASED, deployment("ecs-svc/0002", RELEASED, "PRIMARY", "IN_PROGRESS"))
    for _ in range(3):  # at 0, 10 and 20 s; 20 s is the bound
        scripted.describe(going)
    ecs = Ecs(scripted.client, poll_seconds=10, sleep=clock.sleep)
    with pytest.raises(ReleaseError) as raised:
        ecs.wait_for_rollout(CLUSTER, SERVICE, "ecs-svc/0002", RELEASED, timeout=20)
    assert str(raised.value) == (
        f"deployment ecs-svc/0002 of {RELEASED} did not complete within 20 s"
    )
    assert clock.slept == [10, 10]


def test_an_answer_after_an_error_clears_the_error_from_the_message(scripted, clock):
    scripted.throttled()
    scripted.describe(
        service(RELEASED, deployment("ecs-svc/0002", RELEASED, "PRIMARY", "IN_PROGRESS"))
    )
    ecs = Ecs(scripted.client, poll_seconds=5, sleep=clock.sleep)
    with pytest.raises(ReleaseError) as raised:
        ecs.wait_for_rollout(CLUSTER, SERVICE, "ecs-svc/0002", RELEASED, timeout=5)
    assert str(raised.value).endswith("did not complete within 5 s")


def test_the_default_poll_interval_is_ten_seconds(scripted, clock):
    scripted.describe(
        service(RELEASED, deployment("ecs-svc/0002", RELEASED, "PRIMARY", "IN_PROGRESS"))
    )
    scripted.describe(
        service(RELEASED, deployment("ecs-svc/0002", RELEASED, "PRIMARY", "COMPLETED"))
    )
    Ecs(scripted.client, sleep=clock.sleep).wait_for_rollout(
        CLUSTER, SERVICE, "ecs-svc/0002", RELEASED, timeout=60
    )
    assert clock.slept == [10.0]


@pytest.mark.parametrize(
    ("code", "http_status", "fix"),
    [
        (
            "AccessDeniedException",
            403,
            "grant the deploy role ecs:DescribeServices on the service (terraform/modules/ci "
            "grants what pipeline/aws_calls.py lists) and apply the environment",
        ),
        (
            "ExpiredTokenException",
            403,
            "the AWS session ended before the command did: run it again; in GitHub Actions "
            "the deploy job's role-duration-seconds (.github/workflows/pipeline.yml) must "
            "cover its timeout-minutes",
        ),
        (
            "ClusterNotFoundException",
            400,
            "check the environment's cluster_name, service_name and aws_region outputs, or "
            "run its terraform apply (nox -s apply -- <env>)",
        ),
        ("InvalidParameterException", 400, "asking again would get the same answer"),
    ],
)
def test_an_ecs_error_no_retry_changes_ends_the_wait_at_once_naming_the_fix(
    scripted, clock, code, http_status, fix
):
    """Only throttling and server errors are worth asking again (AWS SDKs and Tools
    reference guide, "Retry behavior"); a refusal stops the wait before its first poll."""
    scripted.stubber.add_client_error("describe_services", code, "no", http_status)
    ecs = Ecs(scripted.client, poll_seconds=10, sleep=clock.sleep)
    with pytest.raises(ReleaseError) as raised:
        ecs.wait_for_rollout(CLUSTER, SERVICE, "ecs-svc/0002", RELEASED, timeout=900)
    assert str(raised.value) == (
        f"ECS refused to describe service {SERVICE!r} in cluster {CLUSTER!r}: An error "
        f"occurred ({code}) when calling the DescribeServices operation: no; {fix}"
    )
    assert clock.slept == []


def test_throttling_and_server_errors_are_asked_again_until_the_rollout_completes(scripted, clock):
    for code, http_status in (
        ("ThrottlingException", 400),
        ("TooManyRequestsException", 400),
        ("ServerException", 500),
        ("ServiceUnavailable", 503),
        ("RequestTimeoutException", 408),
    ):
        scripted.stubber.add_client_error("describe_services", code, "later", http_status)
    scripted.describe(
        service(RELEASED, deployment("ecs-svc/0002", RELEASED, "PRIMARY", "COMPLETED"))
    )
    ecs = Ecs(scripted.client, poll_seconds=10, sleep=clock.sleep)
    ecs.wait_for_rollout(CLUSTER, SERVICE, "ecs-svc/0002", RELEASED, timeout=900)
    assert clock.slept == [10] * 5


def test_a_dropped_connection_is_transient_and_missing_credentials_are_not():
    assert transient(EndpointConnectionError(endpoint_url="https://ecs.us-east-1.amazonaws.com"))
    assert not transient(NoCredentialsError())
    assert str(refusal(NoCredentialsError(), CLUSTER, SERVICE)).endswith(
        ": Unable to locate credentials; check the AWS credentials the pipeline runs with "
        "(AWS_PROFILE, AWS_ACCESS_KEY_ID)"
    )


# -- the smoke test through the service's ASGI app ------------------------------------


def test_a_service_serving_the_candidate_passes_the_smoke_test(endpoints, app, smoke, clock):
    base = endpoints.serve("svc-X", app)  # only the trailing "/" comes off the endpoint
    smoke_test(base + "/", candidate(), smoke, timeout=1, sleep=clock.sleep)
    assert endpoints.requests[0] == ("GET", f"{base}/v2/health/ready")
    assert endpoints.requests[1] == ("GET", f"{base}/v2/models/mnist-8")
    posts = [url for method, url in endpoints.requests if method == "POST"]
    assert posts == [f"{base}/predict"] * (len(smoke.classes) + 1)
    assert clock.slept == []
    # Without a token, no Authorization header at all.
    assert not any("Authorization" in headers for headers in endpoints.headers)


def test_a_wrong_class_fails_the_smoke_test_naming_the_image(endpoints, app, smoke):
    endpoints.serve(HOST, app)
    right = smoke.classes
    wrong = [*right[:2], (right[2] + 1) % 10, *right[3:]]
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(), SmokeImages(smoke.images, wrong), timeout=1)
    assert str(raised.value) == (
        f"smoke test failed on 1/{len(right)} images: image 2: expected {wrong[2]}, "
        f"got {right[2]} (HTTP 200)"
    )


def test_the_message_names_at_most_three_wrong_images(endpoints, app, smoke):
    endpoints.serve(HOST, app)
    wrong = [(c + 1) % 10 for c in smoke.classes]
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(), SmokeImages(smoke.images, wrong), timeout=1)
    right = smoke.classes
    assert str(
        raised.value
    ) == f"smoke test failed on {len(wrong)}/{len(wrong)} images: " + "; ".join(
        f"image {i}: expected {wrong[i]}, got {right[i]} (HTTP 200)" for i in range(3)
    )


def test_images_the_service_refuses_name_its_answer(endpoints, app, smoke):
    endpoints.serve(HOST, app)
    ten_pixels = SmokeImages(smoke.images[:1].reshape(1, -1)[:, :10], [7])
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(), ten_pixels, timeout=1)
    message = str(raised.value)
    assert message.startswith("smoke test failed on 1/1 images: image 0: expected 7, got b'{")
    assert message.endswith("(HTTP 400)")


def test_the_batch_is_checked_after_the_single_images(endpoints, smoke):
    """A service answering single rows right but batches wrong fails on the batch."""
    answers = BatchMisanswering(smoke.classes)
    endpoints.serve(HOST, answers.app())
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(), smoke, timeout=1)
    assert str(raised.value) == (
        f"smoke test failed on the batch: expected {smoke.classes}, "
        f"got {smoke.classes[::-1]} (HTTP 200)"
    )
    assert answers.batch == smoke.images.reshape(len(smoke.classes), -1).tolist()


class BatchMisanswering:
    """A stand-in service: ready, serving mnist-8, right on single rows, batches reversed."""

    def __init__(self, classes: list[int]) -> None:
        self.classes = classes
        self.singles = 0
        self.batch: list | None = None

    def app(self):
        import falcon
        import falcon.asgi

        outer = self

        class Ready:
            async def on_get(self, req, resp):
                resp.media = {"ready": True}

        class Model:
            async def on_get(self, req, resp, name):
                resp.media = {"name": name, "parameters": {"sha256": MNIST8_SHA256}}

        class Predict:
            async def on_post(self, req, resp):
                data = (await req.get_media())["data"]
                if isinstance(data[0], list):
                    outer.batch = data
                    resp.media = {"predictions": outer.classes[::-1]}
                else:
                    resp.media = {"prediction": outer.classes[outer.singles]}
                    outer.singles += 1

        app = falcon.asgi.App()
        app.add_route("/v2/health/ready", Ready())
        app.add_route("/v2/models/{name}", Model())
        app.add_route("/predict", Predict())
        return app


def test_a_service_serving_another_model_fails_naming_both_sha256s(endpoints, app, smoke):
    endpoints.serve(HOST, app)
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(model_sha256=OTHER_SHA256), smoke, timeout=1)
    assert str(raised.value) == (
        f"{BASE} serves model sha256 {MNIST8_SHA256} (HTTP 200), not the released {OTHER_SHA256}"
    )


def test_a_model_name_the_service_does_not_serve_fails_with_its_status(endpoints, app, smoke):
    endpoints.serve(HOST, app)
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(model_name="mnist-12"), smoke, timeout=1)
    assert str(raised.value) == (
        f"{BASE} serves model sha256 None (HTTP 404), not the released {MNIST8_SHA256}"
    )


def test_an_unreachable_service_is_polled_until_the_bound(endpoints, smoke, clock):
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(), smoke, timeout=6, poll_seconds=2, sleep=clock.sleep)
    assert str(raised.value) == (
        f"{BASE} did not become ready within 6 s: unreachable (<urlopen error "
        "[Errno 111] Connection refused>)"
    )
    assert clock.slept == [2, 2, 2]
    assert endpoints.requests == [("GET", f"{BASE}/v2/health/ready")] * 4


def starting_app():
    """A stand-in service still starting: 503 on every route, as the service answers
    before its model is loaded."""
    import falcon
    import falcon.asgi

    class Starting:
        async def on_get(self, req, resp, **params):
            resp.status = falcon.HTTP_503
            resp.media = {"error": "model not loaded yet"}

    app = falcon.asgi.App()
    app.add_route("/v2/health/ready", Starting())
    app.add_route("/v2/models/{name}", Starting())
    return app


def test_a_service_not_ready_is_named_with_its_status(endpoints, smoke, clock):
    endpoints.serve(HOST, starting_app())
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(), smoke, timeout=0, sleep=clock.sleep)
    assert str(raised.value) == f"{BASE} did not become ready within 0 s: 503"


def test_the_ready_wait_sleeps_two_seconds_by_default(endpoints, app, smoke, clock):
    calls = []

    def ready_on_second_call(seconds):
        calls.append(seconds)
        endpoints.serve(HOST, app)

    smoke_test(BASE, candidate(), smoke, timeout=10, sleep=ready_on_second_call)
    assert calls == [2.0]


def test_a_token_is_presented_and_a_request_without_it_must_be_refused(
    endpoints, protected_app, smoke
):
    endpoints.serve(HOST, protected_app)
    smoke_test(BASE, candidate(), smoke, timeout=1, token=TOKEN)
    posts = [url for method, url in endpoints.requests if method == "POST"]
    assert len(posts) == len(smoke.classes) + 2  # the unauthenticated one first


def test_a_service_without_authentication_fails_when_a_token_is_expected(endpoints, app, smoke):
    endpoints.serve(HOST, app)
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(), smoke, timeout=1, token=TOKEN)
    assert str(raised.value) == (
        f"{BASE}/predict answered HTTP 200 to a request without a token: the service does "
        "not require authentication (is API_TOKENS in the task definition's secrets?)"
    )


def test_a_refused_token_names_the_secret_output(endpoints, protected_app, smoke):
    endpoints.serve(HOST, protected_app)
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(), smoke, timeout=1, token=TOKEN[::-1])
    assert str(raised.value) == (
        f"{BASE} refused the pipeline's token (HTTP 401): the environment's "
        "api_token_secret_arn output must name the secret the task definition injects"
    )


def test_a_protected_service_without_a_token_names_the_missing_output(
    endpoints, protected_app, smoke
):
    endpoints.serve(HOST, protected_app)
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(), smoke, timeout=1)
    assert str(raised.value) == (
        f"{BASE} requires a bearer token (HTTP 401), and the environment names no "
        "api_token_secret_arn to read it from"
    )


# -- whole releases --------------------------------------------------------------------


def with_alarms(answer: dict, alarms: tuple[str, ...] = ("placeholder",)) -> dict:
    """`answer` (a DescribeServices service) with ECS watching `alarms` in its deployments."""
    return {
        **answer,
        "deploymentConfiguration": {
            "deploymentCircuitBreaker": {"enable": True, "rollback": True},
            "alarms": {"alarmNames": list(alarms), "enable": True, "rollback": True},
        },
    }


def expect_release_start(
    scripted: ScriptedEcs,
    running: str,
    revision: str,
    terraforms: str = BOOTSTRAP,
    alarms: tuple[str, ...] = (),
) -> None:
    """DescribeServices (the service runs `running`, ECS watching `alarms` during its
    deployments), then the new `revision` registered from Terraform's revision `terraforms`."""
    running_service = service(running, deployment("ecs-svc/0001", running, "PRIMARY", "COMPLETED"))
    if alarms:
        running_service = with_alarms(running_service, alarms)
    scripted.stubber.add_response(
        "describe_services",
        {"services": [running_service]},
        {"cluster": CLUSTER, "services": [SERVICE]},
    )
    expect_register(
        scripted,
        BASE_TASK,
        revision,
        {**registered_request(task_environment(candidate())), "containerDefinitions": ANY},
        terraforms,
    )


def expect_deployment(scripted: ScriptedEcs, revision: str, deployment_id: str, *states: str):
    ours = deployment(deployment_id, revision, "PRIMARY", "IN_PROGRESS")
    scripted.stubber.add_response(
        "update_service",
        {"service": service(revision, ours)},
        {"cluster": CLUSTER, "service": SERVICE, "taskDefinition": revision},
    )
    for state in states:
        scripted.describe(service(revision, deployment(deployment_id, revision, "PRIMARY", state)))


def test_a_release_that_holds_is_recorded_whole(scripted, endpoints, app, smoke, tmp_path, clock):
    endpoints.serve(HOST, app)
    env = environment(BASE, tmp_path)
    expect_release_start(scripted, BOOTSTRAP, NEXT)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "IN_PROGRESS", "COMPLETED")
    said: list[str] = []
    shipped = candidate(provenance={"promoted_from": "dev"})
    outcome = release(env, shipped, smoke, ecs=scripted.ecs(), say=said.append, sleep=clock.sleep)
    assert (outcome.succeeded, outcome.reason) == (True, "")
    assert datetime.fromisoformat(outcome.record["finished_at"]).utcoffset().total_seconds() == 0
    assert (outcome.task_definition, outcome.previous_task_definition) == (NEXT, BOOTSTRAP)
    record = dict(outcome.record)
    started = datetime.fromisoformat(record.pop("started_at"))
    finished = datetime.fromisoformat(record.pop("finished_at"))
    assert started.tzinfo is not None and started <= finished
    assert record == {
        "release_id": release_id("a" * 40, started),
        "environment": "dev",
        "git_sha": "a" * 40,
        "image": IMAGE,
        "model_name": "mnist-8",
        "model_url": shipped.model_url,
        "model_sha256": MNIST8_SHA256,
        "gate": {"accuracy": 0.9891, "passed": True},
        "promoted_from": "dev",
        "previous_task_definition": BOOTSTRAP,
        "task_definition": NEXT,
        "deployment_id": "ecs-svc/0002",
        "outcome": "succeeded",
        # No compaction family in this environment: nothing registered for it.
        "compaction_task_definition": "",
    }
    assert records.read_latest(env.records_url) == outcome.record
    assert said == [
        f"registered {NEXT} (image {IMAGE})",
        f"service {SERVICE}: deployment ecs-svc/0002 of {NEXT}; waiting for COMPLETED",
        f"completed; smoke-testing {BASE}",
        "no compaction_task_family output: the scheduled compaction is left as it is",
        f"released {outcome.record['release_id']} to dev",
    ]


# -- deployment alarms: what ECS ignores when one is in ALARM as a deployment starts -----

ALARMS = (f"{SERVICE}-latency-p95", f"{SERVICE}-lb-5xx", f"{SERVICE}-target-5xx")
EARLIER = datetime(2026, 1, 1, 12, tzinfo=UTC)
LATER = datetime(2026, 1, 1, 13, tzinfo=UTC)


def metric_alarm(name: str, state: str, since: datetime = EARLIER, periods: int = 2) -> dict:
    return {
        "AlarmName": name,
        "StateValue": state,
        "StateTransitionedTimestamp": since,
        "StateUpdatedTimestamp": since,
        "Period": 60,
        "EvaluationPeriods": periods,
    }


@pytest.fixture
def cloudwatch(clock):
    """A CloudWatch client scripted with Stubber (DescribeAlarms validated against its
    model) and the DeploymentAlarms reading it, on the virtual clock."""
    client = offline_client("cloudwatch")
    stubber = Stubber(client)
    watcher = DeploymentAlarms(client, sleep=clock.sleep)
    with stubber:
        yield stubber, watcher
        stubber.assert_no_pending_responses()


def expect_alarms(stubber: Stubber, *alarms: dict) -> None:
    """One DescribeAlarms of the service's deployment alarms, answering `alarms`."""
    stubber.add_response(
        "describe_alarms",
        {"MetricAlarms": list(alarms), "CompositeAlarms": []},
        {"AlarmNames": list(ALARMS), "AlarmTypes": ["MetricAlarm"]},
    )


def quiet_but(*firing: str, since: datetime = EARLIER) -> list[dict]:
    """The three alarms, OK but `firing` (in ALARM since `since`); p95 reads 3 periods."""
    return [
        metric_alarm(name, "ALARM" if name in firing else "OK", since, 3 if "p95" in name else 2)
        for name in ALARMS
    ]


def first_release_with_alarms(scripted, endpoints, app, tmp_path) -> Environment:
    """The environment a first release goes to, its service answered by `app` and ECS
    watching ALARMS during its deployments (the release's first ECS calls scripted)."""
    endpoints.serve(HOST, app)
    expect_release_start(scripted, BOOTSTRAP, NEXT, alarms=ALARMS)
    return environment(BASE, tmp_path)


def release_watched(env, scripted, watcher, smoke, said: list[str], clock=None):
    """A release of `candidate()` with the scripted ECS and the CloudWatch `watcher`."""
    sleep = clock.sleep if clock else lambda seconds: None
    return release(
        env, candidate(), smoke, ecs=scripted.ecs(), alarms=watcher, say=said.append, sleep=sleep
    )


def test_the_watched_alarms_are_the_services_enabled_deployment_alarms():
    configured = {"deploymentConfiguration": {"alarms": {"alarmNames": ["a", "b"], "enable": True}}}
    assert watched_alarms(configured) == ("a", "b")
    configured["deploymentConfiguration"]["alarms"]["enable"] = False
    assert watched_alarms(configured) == ()
    assert watched_alarms({"deploymentConfiguration": {}}) == ()
    assert watched_alarms(service(RELEASED)) == ()


def test_an_alarm_counts_when_it_moves_to_alarm_not_when_it_stays_there():
    def state(value: str, since: datetime = EARLIER) -> AlarmState:
        return AlarmState(value, since, 120.0)

    assert moved_to_alarm({"x": state("OK")}, {"x": state("ALARM", LATER)}) == ["x"]
    assert moved_to_alarm({"x": state("INSUFFICIENT_DATA")}, {"x": state("ALARM")}) == ["x"]
    assert moved_to_alarm({"x": state("ALARM")}, {"x": state("ALARM")}) == []
    # It left ALARM during the deployment and came back: a new failure.
    assert moved_to_alarm({"x": state("ALARM")}, {"x": state("ALARM", LATER)}) == ["x"]
    assert moved_to_alarm({"x": state("ALARM")}, {"x": state("OK", LATER)}) == []
    assert moved_to_alarm({}, {"x": state("ALARM")}) == ["x"]


def test_the_bake_is_the_longest_alarm_window_and_a_minute_of_metrics():
    assert bake_seconds([AlarmState("OK", None, 120.0), AlarmState("OK", None, 180.0)]) == 240.0
    assert bake_seconds([AlarmState("OK", None, 0.0)]) == 60.0
    assert bake_seconds([]) == 0.0


def test_the_alarm_states_are_read_as_cloudwatch_answers_them(cloudwatch):
    """StateValue, when it last changed (not StateUpdatedTimestamp, which also moves when
    only the evaluation's state does) and the window an evaluation reads, by alarm name;
    a metric math alarm has no period of its own; alarms that do not exist are left out."""
    stubber, watcher = cloudwatch
    latency = metric_alarm(ALARMS[0], "ALARM", EARLIER, periods=3)
    latency["StateUpdatedTimestamp"] = LATER
    math = {
        "AlarmName": ALARMS[1],
        "StateValue": "INSUFFICIENT_DATA",
        "StateTransitionedTimestamp": LATER,
        "EvaluationPeriods": 2,
        "Metrics": [
            {"Id": "e1", "Expression": "m1 + m2", "ReturnData": True},
            {"Id": "m1", "ReturnData": False, "Period": 900},
            {
                "Id": "m2",
                "ReturnData": False,
                "MetricStat": {
                    "Metric": {"Namespace": "AWS/ApplicationELB", "MetricName": "x"},
                    "Period": 300,
                    "Stat": "Sum",
                },
            },
        ],
    }
    expressions_only = {
        "AlarmName": ALARMS[2],
        "StateValue": "OK",
        "EvaluationPeriods": 2,
        "Metrics": [{"Id": "e1", "Expression": "TIME_SERIES(1)", "ReturnData": True}],
    }
    expect_alarms(stubber, latency, math, expressions_only)
    stubber.add_response(
        "describe_alarms",
        {},
        {"AlarmNames": list(ALARMS), "AlarmTypes": ["MetricAlarm"]},
    )
    assert watcher.states(ALARMS) == {
        ALARMS[0]: AlarmState("ALARM", EARLIER, 180.0),
        ALARMS[1]: AlarmState("INSUFFICIENT_DATA", LATER, 1800.0),
        ALARMS[2]: AlarmState("OK", None, 0.0),
    }
    assert watcher.states(ALARMS) == {}
    assert watcher.states(()) == {}
    stat = {
        "AlarmName": "stat",
        "StateValue": "OK",
        "EvaluationPeriods": 1,
        "Metrics": [
            {
                "Id": "m1",
                "MetricStat": {
                    "Metric": {"Namespace": "AWS/ApplicationELB", "MetricName": "x"},
                    "Period": 300,
                    "Stat": "Sum",
                },
            }
        ],
    }
    stubber.add_response(
        "describe_alarms",
        {"MetricAlarms": [{"AlarmName": "bare", "StateValue": "OK", "EvaluationPeriods": 1}, stat]},
        {"AlarmNames": ["bare", "stat"], "AlarmTypes": ["MetricAlarm"]},
    )
    assert watcher.states(["bare", "stat"]) == {
        "bare": AlarmState("OK", None, 0.0),
        "stat": AlarmState("OK", None, 300.0),
    }


def test_the_bake_reads_now_and_after_each_poll_until_its_time_is_up(cloudwatch, clock):
    stubber, watcher = cloudwatch
    before = {name: AlarmState("OK", EARLIER, 180.0 if "p95" in name else 120.0) for name in ALARMS}
    for _ in range(4):  # at 0, 10, 20 and 30 s: 30 s is the first reading past 20.5
        expect_alarms(stubber, *quiet_but())
    assert watcher.bake(before, 20.5) == before
    assert clock.slept == [10.0] * 3
    expect_alarms(stubber, *quiet_but(ALARMS[0], since=LATER))  # moved at once: no sleep
    assert watcher.bake(before, 20.5)[ALARMS[0]].in_alarm
    assert clock.slept == [10.0] * 3


def test_a_release_with_its_alarms_quiet_leaves_the_watching_to_ecs(
    scripted, cloudwatch, endpoints, app, smoke, tmp_path, clock
):
    stubber, watcher = cloudwatch
    env = first_release_with_alarms(scripted, endpoints, app, tmp_path)
    expect_alarms(stubber, *quiet_but())  # before the update
    expect_alarms(stubber, *quiet_but())  # as the deployment starts
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    said: list[str] = []
    outcome = release_watched(env, scripted, watcher, smoke, said, clock)
    assert outcome.succeeded
    assert "alarms_in_alarm_at_start" not in outcome.record
    assert not any("ALARM" in line for line in said)
    assert clock.slept == []


def test_a_release_ecs_does_not_watch_is_watched_for_its_bake_time(
    scripted, cloudwatch, endpoints, app, smoke, tmp_path, clock
):
    """Alarms in ALARM as the deployment starts: ECS ignores every alarm for it, so the
    release reads them after the smoke test for the longest window and a minute (240 s,
    every 10 s), and succeeds when none moved to ALARM, naming the ones still there."""
    stubber, watcher = cloudwatch
    env = first_release_with_alarms(scripted, endpoints, app, tmp_path)
    firing = (f"{SERVICE}-target-5xx", f"{SERVICE}-lb-5xx")
    for _ in range(2 + 25):  # before the update, as it starts, then at 0, 10, ..., 240 s
        expect_alarms(stubber, *quiet_but(*firing))
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    said: list[str] = []
    outcome = release_watched(env, scripted, watcher, smoke, said, clock)
    assert (outcome.succeeded, outcome.reason) == (True, "")
    named = f"{SERVICE}-lb-5xx, {SERVICE}-target-5xx"
    assert outcome.record["alarms_in_alarm_at_start"] == sorted(firing)
    assert clock.slept == [10.0] * 24
    assert said[1] == (
        f"deployment alarms in ALARM as the deployment starts: {named}. ECS ignores the "
        "service's deployment alarms for a deployment that starts so (ECS developer guide, "
        '"How CloudWatch alarms detect Amazon ECS deployment failures"), so this release '
        "watches them for 240 s after the smoke test, and fails if one moves to ALARM meanwhile"
    )
    assert said[-3] == (
        f"no deployment alarm went into ALARM in 240 s; still in ALARM since before this "
        f"release: {named}"
    )


def test_the_environments_cloudwatch_client_reads_the_alarms_at_the_releases_pace(
    scripted, cloudwatch, endpoints, app, smoke, tmp_path, clock
):
    """Without an injected watcher the release reads the alarms with the environment's
    CloudWatch client and sleeps with its own `sleep`; an alarm that leaves ALARM during
    the bake is not named at the end."""
    stubber, _ = cloudwatch
    env = first_release_with_alarms(scripted, endpoints, app, tmp_path)
    firing = f"{SERVICE}-target-5xx"
    for _ in range(2 + 13):  # before the update, as it starts, then at 0, 10, ..., 120 s
        expect_alarms(stubber, *quiet_but(firing))
    for _ in range(12):  # cleared at 130 s
        expect_alarms(stubber, *quiet_but())
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")

    def client(env, name):
        assert name == "cloudwatch", name
        return stubber.client

    said: list[str] = []
    with mock.patch.object(Environment, "client", client):
        outcome = release(
            env, candidate(), smoke, ecs=scripted.ecs(), say=said.append, sleep=clock.sleep
        )
    assert outcome.succeeded
    assert clock.slept == [10.0] * 24
    assert said[-3] == "no deployment alarm went into ALARM in 240 s"


def test_alarms_the_role_may_not_read_stop_the_release_before_anything_changes(
    scripted, cloudwatch, smoke, tmp_path, clock
):
    stubber, watcher = cloudwatch
    env = environment(BASE, tmp_path)
    scripted.stubber.add_response(
        "describe_services",
        {"services": [with_alarms(service(BOOTSTRAP), ALARMS)]},
        {"cluster": CLUSTER, "services": [SERVICE]},
    )
    stubber.add_client_error("describe_alarms", "AccessDenied", "not authorized", 403)
    with pytest.raises(ClientError, match="AccessDenied"):
        release(env, candidate(), smoke, ecs=scripted.ecs(), alarms=watcher, sleep=clock.sleep)
    assert records.list_records(env.records_url) == []  # nothing registered, nothing written


def test_alarms_ecs_names_that_cloudwatch_does_not_have_are_named(
    scripted, cloudwatch, endpoints, app, smoke, tmp_path, clock
):
    stubber, watcher = cloudwatch
    env = first_release_with_alarms(scripted, endpoints, app, tmp_path)
    expect_alarms(stubber, *quiet_but()[2:])  # two were deleted
    expect_alarms(stubber, *quiet_but()[2:])
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    said: list[str] = []
    outcome = release_watched(env, scripted, watcher, smoke, said)
    assert outcome.succeeded
    assert said[0] == (
        "deployment alarms the service names that are not metric alarms in CloudWatch "
        f"(deleted, or composite), which this release cannot read: {ALARMS[0]}, {ALARMS[1]}"
    )


def test_an_alarm_read_that_fails_during_the_bake_rolls_the_release_back(
    scripted, cloudwatch, endpoints, app, smoke, tmp_path, clock
):
    stubber, watcher = cloudwatch
    env = first_release_with_alarms(scripted, endpoints, app, tmp_path)
    firing = f"{SERVICE}-target-5xx"
    expect_alarms(stubber, *quiet_but(firing))
    expect_alarms(stubber, *quiet_but(firing))
    stubber.add_client_error("describe_alarms", "AccessDenied", "not authorized", 403)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    scripted.revision(BOOTSTRAP)
    expect_deployment(scripted, BOOTSTRAP, "ecs-svc/0003", "COMPLETED")
    outcome = release_watched(env, scripted, watcher, smoke, [])
    assert outcome.record["outcome"] == "rolled_back"
    assert "AccessDenied" in outcome.reason and "DescribeAlarms" in outcome.reason


def test_an_alarm_that_fires_while_ecs_is_not_watching_rolls_the_release_back(
    scripted, cloudwatch, endpoints, app, smoke, tmp_path, clock
):
    stubber, watcher = cloudwatch
    endpoints.serve(HOST, app)
    env = environment(BASE, tmp_path)
    records.write(
        env.records_url,
        {
            "release_id": "20260101T000000Z-bbbbbbbbbbbb",
            "model_sha256": MNIST8_SHA256,
            "outcome": "succeeded",
            "gate": {"accuracy": 0.99},
            "task_definition": RELEASED,
        },
    )
    expect_release_start(scripted, RELEASED, NEXT, alarms=ALARMS)
    firing, latency, targets = (
        f"{SERVICE}-{name}" for name in ("lb-5xx", "latency-p95", "target-5xx")
    )
    expect_alarms(stubber, *quiet_but())  # before the update: quiet
    expect_alarms(stubber, *quiet_but(firing))  # as the deployment starts
    expect_alarms(stubber, *quiet_but(firing))  # the bake's first reading
    expect_alarms(stubber, *quiet_but(firing, latency, targets))
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    scripted.revision(RELEASED)
    expect_deployment(scripted, RELEASED, "ecs-svc/0003", "COMPLETED")
    outcome = release_watched(env, scripted, watcher, smoke, [], clock)
    why = (
        f"deployment alarms moved to ALARM after the rollout: {latency}, {targets} (ECS was "
        "not watching the alarms: one was in ALARM as the deployment started)"
    )
    assert (outcome.succeeded, outcome.reason) == (False, why)
    assert outcome.record["outcome"] == "rolled_back"
    assert outcome.record["alarms_in_alarm_at_start"] == [firing]
    assert clock.slept == [10.0]


def test_a_failed_smoke_test_returns_to_the_last_release_and_records_why(
    scripted, endpoints, app, smoke, tmp_path, clock
):
    endpoints.serve(HOST, app)
    env = environment(BASE, tmp_path)
    last = {
        "release_id": "20260101T000000Z-bbbbbbbbbbbb",
        "model_sha256": MNIST8_SHA256,
        "outcome": "succeeded",
        "gate": {"accuracy": 0.99},
        "task_definition": RELEASED,
    }
    records.write(env.records_url, last)
    # The service runs something else now (a hand-made change): the release still
    # returns to the last successful release, not to what ran.
    expect_release_start(scripted, BOOTSTRAP, NEXT)
    expect_deployment(scripted, NEXT, "ecs-svc/0003", "COMPLETED")
    scripted.revision(RELEASED)
    expect_deployment(scripted, RELEASED, "ecs-svc/0004", "COMPLETED")
    said: list[str] = []
    outcome = release(
        env,
        candidate(model_sha256=OTHER_SHA256),
        smoke,
        ecs=scripted.ecs(),
        say=said.append,
        sleep=clock.sleep,
        smoke_timeout=1,
    )
    why = f"{BASE} serves model sha256 {MNIST8_SHA256} (HTTP 200), not the released {OTHER_SHA256}"
    assert (outcome.succeeded, outcome.reason) == (False, why)
    assert (outcome.task_definition, outcome.previous_task_definition) == (NEXT, BOOTSTRAP)
    assert outcome.record["outcome"] == "rolled_back"
    assert outcome.record["reason"] == why
    assert datetime.fromisoformat(outcome.record["finished_at"]).utcoffset().total_seconds() == 0
    assert records.read_latest(env.records_url) == last
    (attempt,) = [r for r in records.list_records(env.records_url) if r.get("git_sha")]
    assert attempt == outcome.record
    assert said[-1] == f"release failed: {why}; rolling back to {RELEASED}"


def test_a_failed_first_release_returns_to_what_ran_before(
    scripted, endpoints, smoke, tmp_path, clock
):
    env = environment(BASE, tmp_path)  # nothing serves it: the smoke test never sees ready
    expect_release_start(scripted, BOOTSTRAP, NEXT)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    scripted.revision(BOOTSTRAP)
    expect_deployment(scripted, BOOTSTRAP, "ecs-svc/0003", "COMPLETED")
    outcome = release(
        env,
        candidate(),
        smoke,
        ecs=scripted.ecs(),
        say=lambda m: None,
        sleep=clock.sleep,
        smoke_timeout=4,
    )
    assert not outcome.succeeded
    assert outcome.reason.startswith(f"{BASE} did not become ready within 4 s: unreachable")
    assert clock.slept == [2.0, 2.0]
    assert records.read_latest(env.records_url) is None


def test_a_rollback_that_does_not_complete_is_recorded_as_failed(
    scripted, endpoints, smoke, tmp_path, clock
):
    env = environment(BASE, tmp_path)
    expect_release_start(scripted, BOOTSTRAP, NEXT)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    scripted.revision(BOOTSTRAP)
    scripted.stubber.add_client_error(
        "update_service",
        "ServerException",
        "ECS is down",
        500,
        expected_params={"cluster": CLUSTER, "service": SERVICE, "taskDefinition": BOOTSTRAP},
    )
    outcome = release(
        env,
        candidate(),
        smoke,
        ecs=scripted.ecs(),
        say=lambda m: None,
        sleep=clock.sleep,
        smoke_timeout=0,
    )
    assert outcome.record["outcome"] == "failed"
    assert outcome.reason == (
        f"{BASE} did not become ready within 0 s: unreachable (<urlopen error [Errno 111] "
        f"Connection refused>); the rollback to {BOOTSTRAP} did not complete: An error "
        "occurred (ServerException) when calling the UpdateService operation: ECS is down"
    )
    assert outcome.record["reason"] == outcome.reason


def test_an_ecs_error_on_the_update_rolls_back(scripted, endpoints, smoke, tmp_path, clock):
    env = environment(BASE, tmp_path)
    expect_release_start(scripted, BOOTSTRAP, NEXT)
    scripted.stubber.add_client_error("update_service", "AccessDeniedException", "no", 400)
    scripted.revision(BOOTSTRAP)
    expect_deployment(scripted, BOOTSTRAP, "ecs-svc/0003", "COMPLETED")
    outcome = release(
        env, candidate(), smoke, ecs=scripted.ecs(), say=lambda m: None, sleep=clock.sleep
    )
    assert outcome.record["outcome"] == "rolled_back"
    assert "AccessDeniedException" in outcome.reason
    assert "deployment_id" not in outcome.record


def test_the_deployment_wait_is_bounded_by_the_stable_timeout(
    scripted, endpoints, smoke, tmp_path, clock
):
    env = environment(BASE, tmp_path)
    expect_release_start(scripted, BOOTSTRAP, NEXT)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "IN_PROGRESS", "IN_PROGRESS")
    scripted.revision(BOOTSTRAP)
    expect_deployment(scripted, BOOTSTRAP, "ecs-svc/0003", "IN_PROGRESS", "COMPLETED")
    ecs = Ecs(scripted.client, poll_seconds=30, sleep=clock.sleep)
    outcome = release(
        env,
        candidate(),
        smoke,
        ecs=ecs,
        say=lambda m: None,
        sleep=clock.sleep,
        stable_timeout=30,
    )
    assert outcome.reason == (f"deployment ecs-svc/0002 of {NEXT} did not complete within 30 s")
    assert outcome.record["outcome"] == "rolled_back"


def test_default_bounds_are_fifteen_and_five_minutes(scripted, endpoints, smoke, tmp_path, clock):
    env = environment(BASE, tmp_path)
    expect_release_start(scripted, BOOTSTRAP, NEXT)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    scripted.revision(BOOTSTRAP)
    expect_deployment(scripted, BOOTSTRAP, "ecs-svc/0003", "COMPLETED")
    outcome = release(
        env, candidate(), smoke, ecs=scripted.ecs(), say=lambda m: None, sleep=clock.sleep
    )
    assert " within 300 s" in outcome.reason
    assert sum(clock.slept) == 300


# Terraform's revision after an apply that changed the task: the revision the service
# ran before (BOOTSTRAP) was deregistered by that apply.
APPLIED = f"arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/{FAMILY}:4"


def failing_release(scripted, env: Environment, smoke, clock: Clock, said: list[str]):
    """A release whose smoke test fails: nothing serves the endpoint."""
    return release(
        env,
        candidate(),
        smoke,
        ecs=scripted.ecs(),
        say=said.append,
        sleep=clock.sleep,
        smoke_timeout=0,
    )


def test_a_first_release_returns_to_terraforms_revision_when_the_one_before_is_inactive(
    scripted, endpoints, smoke, tmp_path, clock
):
    """ECS refuses UpdateService to an INACTIVE revision (ECS API reference,
    DeregisterTaskDefinition), so the release goes back to Terraform's current one."""
    env = replace(environment(BASE, tmp_path), task_definition_arn=APPLIED)
    expect_release_start(scripted, BOOTSTRAP, NEXT, terraforms=APPLIED)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    scripted.revision(BOOTSTRAP, "INACTIVE")
    scripted.revision(APPLIED)
    expect_deployment(scripted, APPLIED, "ecs-svc/0003", "COMPLETED")
    said: list[str] = []
    outcome = failing_release(scripted, env, smoke, clock, said)
    assert outcome.record["outcome"] == "rolled_back", outcome.reason
    assert outcome.record["previous_task_definition"] == BOOTSTRAP
    assert said[-1] == (
        f"{BOOTSTRAP} is INACTIVE; rolling back to Terraform's revision {APPLIED} instead"
    )
    assert records.read_latest(env.records_url) is None


def test_a_first_release_returns_to_terraforms_revision_when_the_one_before_is_deleted(
    scripted, endpoints, smoke, tmp_path, clock
):
    """A deleted revision is removed for good once nothing references it, and
    DescribeTaskDefinition then answers ClientException (ECS API reference,
    DescribeTaskDefinition): the release still goes back to Terraform's revision."""
    env = replace(environment(BASE, tmp_path), task_definition_arn=APPLIED)
    expect_release_start(scripted, BOOTSTRAP, NEXT, terraforms=APPLIED)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    scripted.revision_gone(BOOTSTRAP)
    scripted.revision(APPLIED)
    expect_deployment(scripted, APPLIED, "ecs-svc/0003", "COMPLETED")
    said: list[str] = []
    outcome = failing_release(scripted, env, smoke, clock, said)
    assert outcome.record["outcome"] == "rolled_back", outcome.reason
    assert said[-1] == (
        f"{BOOTSTRAP} is deleted (ECS no longer describes it); rolling back to "
        f"Terraform's revision {APPLIED} instead"
    )


def test_a_first_release_with_no_active_revision_to_return_to_says_to_apply(
    scripted, endpoints, smoke, tmp_path, clock
):
    env = replace(environment(BASE, tmp_path), task_definition_arn=APPLIED)
    expect_release_start(scripted, BOOTSTRAP, NEXT, terraforms=APPLIED)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    scripted.revision(BOOTSTRAP, "INACTIVE")
    scripted.revision(APPLIED, "DELETE_IN_PROGRESS")
    outcome = failing_release(scripted, env, smoke, clock, [])
    assert outcome.record["outcome"] == "failed"
    assert outcome.reason.endswith(
        f"; the rollback to {BOOTSTRAP} did not complete: {BOOTSTRAP} is INACTIVE and "
        f"Terraform's revision {APPLIED} is DELETE_IN_PROGRESS, and ECS cannot point a service "
        "at a revision that is not ACTIVE: run nox -s apply -- dev, which registers "
        "Terraform's revision anew, then deploy again"
    )


@pytest.mark.parametrize(
    "last_release, fix",
    [
        (
            None,
            f"{BOOTSTRAP}, Terraform's revision, is INACTIVE, and ECS cannot point a service at "
            "a revision that is not ACTIVE: run nox -s apply -- dev, which registers "
            "Terraform's revision anew, then deploy again",
        ),
        (
            RELEASED,
            f"{RELEASED}, the last successful release's revision, is INACTIVE, and ECS cannot "
            "point a service at a revision that is not ACTIVE: deploy that release's commit "
            "again, which registers a new revision of it",
        ),
    ],
    ids=["first release, Terraform's revision", "later release, deregistered by hand"],
)
def test_a_revision_to_return_to_that_is_inactive_says_what_to_do(
    scripted, endpoints, smoke, tmp_path, clock, last_release, fix
):
    """A first release whose Terraform revision is INACTIVE says to apply; a later one
    whose last good revision was deregistered is not put on Terraform's placeholder, but
    says how to get that release back."""
    env = environment(BASE, tmp_path)
    if last_release:
        env = replace(env, task_definition_arn=APPLIED)
        records.write(env.records_url, succeeded("20260101T000000Z-cccccccccccc", last_release))
        expect_release_start(scripted, last_release, NEXT, terraforms=APPLIED)
    else:
        expect_release_start(scripted, BOOTSTRAP, NEXT)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    scripted.revision(last_release or BOOTSTRAP, "INACTIVE")
    outcome = failing_release(scripted, env, smoke, clock, [])
    assert outcome.record["outcome"] == "failed"
    assert outcome.reason.endswith(f"did not complete: {fix}")


def test_a_token_secret_is_read_before_anything_changes(scripted, smoke, tmp_path):
    """An environment whose secret cannot be read stops before any ECS call."""
    env = replace(environment(BASE, tmp_path), api_token_secret_arn="arn:aws:secretsmanager:x")
    with secret_holding(None), pytest.raises(MissingEnvironment):
        release(env, candidate(), smoke, ecs=scripted.ecs(), say=lambda m: None)


@contextmanager
def secret_holding(value: str | None) -> Iterator[None]:
    """Environment.client("secretsmanager") answers GetSecretValue with `value` (None: refused)."""
    client = offline_client("secretsmanager")
    stubber = Stubber(client)
    if value is None:
        stubber.add_client_error("get_secret_value", "AccessDeniedException", "no", 400)
    else:
        stubber.add_response("get_secret_value", {"SecretString": value, "Name": "tokens"})

    def only_secrets(env, name):
        assert name == "secretsmanager", name
        return client

    with stubber, mock.patch.object(Environment, "client", only_secrets):
        yield
        stubber.assert_no_pending_responses()


def test_a_protected_release_presents_the_secrets_token(
    scripted, endpoints, protected_app, smoke, tmp_path, clock
):
    endpoints.serve(HOST, protected_app)
    env = replace(environment(BASE, tmp_path), api_token_secret_arn="arn:aws:secretsmanager:x")
    expect_release_start(scripted, BOOTSTRAP, NEXT)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    with secret_holding(TOKEN):
        outcome = release(
            env, candidate(), smoke, ecs=scripted.ecs(), say=lambda m: None, sleep=clock.sleep
        )
    assert outcome.succeeded, outcome.reason


# -- rollback ------------------------------------------------------------------------


# The verified tag of the code and model every release below runs unless a test says
# otherwise (a rollback between them withdraws nothing).
SAME_CODE_TAG = promotion.verified_tag("e" * 40, MNIST8_SHA256)


def succeeded(release_id: str, task_definition: str, **more) -> dict:
    return {
        "release_id": release_id,
        "model_sha256": MNIST8_SHA256,
        "model_name": "mnist-8",
        "outcome": "succeeded",
        "gate": {"accuracy": 0.99},
        "task_definition": task_definition,
        "git_sha": "c" * 40,
        "reason": "x",
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00",
        "deployment_id": "ecs-svc/old",
        "verified_tag": SAME_CODE_TAG,
        **more,
    }


def test_rollback_returns_to_the_release_before_the_latest_and_records_it(
    scripted, tmp_path, clock
):
    env = environment(BASE, tmp_path)
    first = succeeded("20260101T000000Z-cccccccccccc", BOOTSTRAP)
    second = succeeded("20260102T000000Z-cccccccccccc", RELEASED, image="img:2")
    failed = {**succeeded("20260102T120000Z-dddddddddddd", NEXT), "outcome": "rolled_back"}
    third = succeeded("20260103T000000Z-eeeeeeeeeeee", NEXT)
    for record in (first, second, failed, third):
        records.write(env.records_url, record)
    scripted.revision(RELEASED)
    expect_deployment(scripted, RELEASED, "ecs-svc/0009", "COMPLETED")
    said: list[str] = []
    record = rollback(env, ecs=scripted.ecs(), say=said.append)
    now = datetime.fromisoformat(record.pop("started_at"))
    assert datetime.fromisoformat(record.pop("finished_at")) >= now
    assert record == {
        "release_id": release_id("c" * 40, now),
        "model_sha256": MNIST8_SHA256,
        "model_name": "mnist-8",
        "outcome": "succeeded",
        "gate": {"accuracy": 0.99},
        "task_definition": RELEASED,
        "git_sha": "c" * 40,
        "image": "img:2",
        "rollback_of": third["release_id"],
        "restores": second["release_id"],
        "deployment_id": "ecs-svc/0009",
        "previous_task_definition": NEXT,
        "compaction_task_definition": "",
        "verified_tag": SAME_CODE_TAG,
    }
    assert records.read_latest(env.records_url)["restores"] == second["release_id"]
    assert said == [
        f"rolling dev back from {third['release_id']} to {second['release_id']} ({RELEASED})",
        "no compaction_task_family output: the scheduled compaction is left as it is",
    ]


# -- the scheduled compaction follows the last successful release ----------------------

COMPACTION_FAMILY = f"{FAMILY}-compaction"
COMPACTION_ROLE = f"arn:aws:iam::{ACCOUNT}:role/onnx-ship-dev-compaction"
COMPACTION_REVISION = f"arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/{COMPACTION_FAMILY}:7"
COMPACT_COMMAND = [
    "python", "-m", "pipeline.predictions.compact", "dev",
    "--url", "s3://bucket/capture", "--since", "2d",
]  # fmt: skip


def with_compaction(env: Environment) -> Environment:
    return replace(
        env, compaction_task_family=COMPACTION_FAMILY, compaction_role_arn=COMPACTION_ROLE
    )


def released_task(arn: str, image: str) -> dict:
    """A released service revision as DescribeTaskDefinition answers it: the server with
    its token, port and health check, and a sidecar."""
    return {
        **BASE_TASK,
        "taskDefinitionArn": arn,
        "containerDefinitions": [
            {
                "name": "server",
                "image": image,
                "environment": [{"name": "APP_ENV", "value": "dev"}],
                "secrets": [{"name": "API_TOKENS", "valueFrom": "arn:aws:secretsmanager:x"}],
                "portMappings": [{"containerPort": 8080}],
                "healthCheck": {"command": ["CMD", "true"]},
            },
            {"name": "sidecar", "image": "agent:1", "command": ["agent"]},
        ],
    }


def expect_compaction(scripted: ScriptedEcs, released: str, image: str) -> None:
    """DescribeTaskDefinition of `released`, then exactly this RegisterTaskDefinition: the
    compaction family and role, the compaction command, no token, port or health check,
    the released revision's tags."""
    scripted.stubber.add_response(
        "describe_task_definition",
        {"taskDefinition": released_task(released, image), "tags": TAGS},
        {"taskDefinition": released, "include": ["TAGS"]},
    )
    scripted.stubber.add_response(
        "register_task_definition",
        {"taskDefinition": {"taskDefinitionArn": COMPACTION_REVISION, "family": COMPACTION_FAMILY}},
        {
            "family": COMPACTION_FAMILY,
            "taskRoleArn": COMPACTION_ROLE,
            **BASE_KEPT,
            "containerDefinitions": [
                {
                    "name": "server",
                    "image": image,
                    "environment": [{"name": "APP_ENV", "value": "dev"}],
                    "command": COMPACT_COMMAND,
                },
                {"name": "sidecar", "image": "agent:1", "command": ["agent"]},
            ],
            "tags": TAGS,
        },
    )


def test_a_successful_release_points_the_scheduled_compaction_at_its_image(
    scripted, endpoints, app, smoke, tmp_path, clock
):
    endpoints.serve(HOST, app)
    env = with_compaction(environment(BASE, tmp_path))
    expect_release_start(scripted, BOOTSTRAP, NEXT)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    expect_compaction(scripted, NEXT, IMAGE)
    said: list[str] = []
    outcome = release(
        env, candidate(), smoke, ecs=scripted.ecs(), say=said.append, sleep=clock.sleep
    )
    assert outcome.succeeded
    assert outcome.record["compaction_task_definition"] == COMPACTION_REVISION
    assert records.read_latest(env.records_url) == outcome.record
    assert said[-2:] == [
        f"scheduled compaction runs {COMPACTION_REVISION}",
        f"released {outcome.record['release_id']} to dev",
    ]


def test_rollback_points_the_scheduled_compaction_back_at_the_restored_image(
    scripted, tmp_path, clock
):
    env = with_compaction(environment(BASE, tmp_path))
    for record in (
        succeeded("20260102T000000Z-cccccccccccc", RELEASED, image="img:2"),
        succeeded("20260103T000000Z-eeeeeeeeeeee", NEXT),
    ):
        records.write(env.records_url, record)
    scripted.revision(RELEASED)
    expect_deployment(scripted, RELEASED, "ecs-svc/0009", "COMPLETED")
    expect_compaction(scripted, RELEASED, "img:2")
    said: list[str] = []
    record = rollback(env, ecs=scripted.ecs(), say=said.append)
    assert record["compaction_task_definition"] == COMPACTION_REVISION
    assert said[-1] == f"scheduled compaction runs {COMPACTION_REVISION}"


def test_a_released_revision_without_the_container_fails_compaction_by_name(scripted):
    env = with_compaction(environment(BASE, "unused"))
    scripted.stubber.add_response(
        "describe_task_definition",
        {"taskDefinition": {**released_task(NEXT, IMAGE), "containerDefinitions": []}},
        {"taskDefinition": NEXT, "include": ["TAGS"]},
    )
    with pytest.raises(ReleaseError) as raised:
        scripted.ecs().register_compaction(env, NEXT)
    assert str(raised.value) == (
        f"task definition {NEXT} has no container 'server'; check the container_name output"
    )


def test_rollback_of_a_record_without_a_sha_still_names_itself(scripted, tmp_path):
    env = environment(BASE, tmp_path)
    first = succeeded("20260101T000000Z-cccccccccccc", BOOTSTRAP)
    del first["git_sha"]
    records.write(env.records_url, first)
    records.write(env.records_url, succeeded("20260102T000000Z-cccccccccccc", RELEASED))
    scripted.revision(BOOTSTRAP)
    expect_deployment(scripted, BOOTSTRAP, "ecs-svc/0009", "COMPLETED")
    record = rollback(env, ecs=scripted.ecs(), say=lambda m: None)
    assert record["release_id"].endswith("Z-rollback")


def test_rollback_waits_with_its_bound(scripted, tmp_path, clock):
    env = environment(BASE, tmp_path)
    records.write(env.records_url, succeeded("20260101T000000Z-cccccccccccc", BOOTSTRAP))
    records.write(env.records_url, succeeded("20260102T000000Z-cccccccccccc", RELEASED))
    scripted.revision(BOOTSTRAP)
    expect_deployment(scripted, BOOTSTRAP, "ecs-svc/0009", "IN_PROGRESS", "IN_PROGRESS")
    ecs = Ecs(scripted.client, poll_seconds=7, sleep=clock.sleep)
    with pytest.raises(ReleaseError, match="did not complete within 7 s"):
        rollback(env, ecs=ecs, say=lambda m: None, stable_timeout=7)
    assert clock.slept == [7]


def test_rollback_without_two_successful_releases_says_how_many(scripted, tmp_path):
    env = environment(BASE, tmp_path)
    with pytest.raises(ReleaseError) as raised:
        rollback(env, ecs=scripted.ecs(), say=lambda m: None)
    assert str(raised.value) == (
        "dev has no earlier successful release to return to (0 successful release(s) recorded)"
    )
    records.write(env.records_url, succeeded("20260101T000000Z-cccccccccccc", BOOTSTRAP))
    records.write(
        env.records_url,
        {**succeeded("20260102T000000Z-cccccccccccc", RELEASED), "outcome": "failed"},
    )
    with pytest.raises(ReleaseError) as raised:
        rollback(env, ecs=scripted.ecs(), say=lambda m: None)
    assert str(raised.value).endswith("(1 successful release(s) recorded)")


@pytest.mark.parametrize("gone", ["INACTIVE", "DELETE_IN_PROGRESS", "deleted"])
def test_rollback_to_a_revision_that_cannot_run_changes_nothing_and_says_what_to_do(
    scripted, tmp_path, gone
):
    """ECS cannot point a service at a revision that is not ACTIVE (ECS API reference,
    DeregisterTaskDefinition); a deleted one it no longer describes at all. The rollback
    stops before UpdateService and says how to ship that code again: a revert commit, since
    a deploy of the older commit itself is refused (pipeline.deploy.refuse_older)."""
    env = environment(BASE, tmp_path)
    records.write(env.records_url, succeeded("20260101T000000Z-cccccccccccc", RELEASED))
    later = succeeded("20260102T000000Z-dddddddddddd", NEXT, git_sha="d" * 40)
    records.write(env.records_url, later)
    if gone == "deleted":
        scripted.revision_gone(RELEASED)
        state = "deleted (ECS no longer describes it)"
    else:
        scripted.revision(RELEASED, gone)
        state = gone
    with pytest.raises(ReleaseError) as raised:
        rollback(env, ecs=scripted.ecs(), say=lambda m: None)
    assert str(raised.value) == (
        f"{RELEASED}, the revision of release 20260101T000000Z-cccccccccccc, is {state}, and "
        "ECS cannot point a service at a revision that is not ACTIVE (ECS API reference, "
        "DeregisterTaskDefinition): nothing was changed; push a commit that reverts "
        f"cccccccccccc..dddddddddddd (git revert --no-edit {'c' * 40}..{'d' * 40}) and deploy "
        "it as usual (dev first; prod by merging dev): it ships that code and model as a new "
        "release. cccccccccccc itself is refused, as older code than dev runs"
    )
    scripted.stubber.assert_no_pending_responses()
    assert records.read_latest(env.records_url)["task_definition"] == NEXT


def ecr_answering(*found: bool) -> tuple[Stubber, Callable[[], Ecr]]:
    """An Ecr over a stubbed ECR client whose BatchGetImage answers, in turn, the image by
    digest (True) or ECR's failure for an image it no longer holds (False)."""
    client = boto3.client("ecr", region_name="us-east-1")
    stubber = Stubber(client)
    for there in found:
        digest = {"imageDigest": EXPIRED_DIGEST}
        image = {"imageId": digest, "imageManifest": "{}", "repositoryName": "onnx-ship-dev"}
        failure = {"imageId": digest, "failureCode": "ImageNotFound", "failureReason": "gone"}
        answer = (
            {"images": [image], "failures": []} if there else {"images": [], "failures": [failure]}
        )
        expected = {
            "repositoryName": "onnx-ship-dev",
            "imageIds": [digest],
            "acceptedMediaTypes": ANY,
        }
        stubber.add_response("batch_get_image", answer, expected)
    stubber.activate()
    return stubber, lambda: Ecr(client)


EXPIRED_DIGEST = f"sha256:{'7' * 64}"


def released_image_then_newer(env: Environment, image: str) -> None:
    """A release of RELEASED running `image` (commit cccc...), then one of NEXT (dddd...)."""
    records.write(
        env.records_url, succeeded("20260101T000000Z-cccccccccccc", RELEASED, image=image)
    )
    later = succeeded("20260102T000000Z-dddddddddddd", NEXT, git_sha="d" * 40)
    records.write(env.records_url, later)


def test_rollback_to_a_release_whose_image_expired_changes_nothing_and_says_what_to_do(
    scripted, tmp_path
):
    """The repository's lifecycle policy may have expired the image of an old release: a
    deployment of it could not pull it, and would fail only once the circuit breaker gave
    up. The rollback asks ECR first and stops before UpdateService."""
    env = environment(BASE, tmp_path)
    image = f"{env.ecr_repository_url}@{EXPIRED_DIGEST}"
    released_image_then_newer(env, image)
    scripted.revision(RELEASED)
    stubber, ecr = ecr_answering(False)
    with pytest.raises(ReleaseError) as raised:
        rollback(env, ecs=scripted.ecs(), ecr=ecr, say=lambda m: None)
    assert str(raised.value).startswith(
        f"the image of release 20260101T000000Z-cccccccccccc, {image}, is no longer in the "
        "onnx-ship-dev repository (its lifecycle policy expired it), so its tasks could not "
        "start: nothing was changed; push a commit that reverts cccccccccccc..dddddddddddd"
    )
    stubber.assert_no_pending_responses()
    scripted.stubber.assert_no_pending_responses()
    assert records.read_latest(env.records_url)["task_definition"] == NEXT
    # With the image there, the same rollback goes ahead.
    scripted.revision(RELEASED)
    expect_deployment(scripted, RELEASED, "ecs-svc/0009", "COMPLETED")
    stubber, ecr = ecr_answering(True)
    assert rollback(env, ecs=scripted.ecs(), ecr=ecr, say=lambda m: None)["image"] == image
    stubber.assert_no_pending_responses()


def test_rollback_when_the_latest_is_the_oldest_says_so(scripted, tmp_path):
    env = environment(BASE, tmp_path)
    records.write(env.records_url, succeeded("20260102T000000Z-cccccccccccc", RELEASED))
    records.write(env.records_url, succeeded("20260101T000000Z-cccccccccccc", BOOTSTRAP))
    with pytest.raises(ReleaseError) as raised:
        rollback(env, ecs=scripted.ecs(), say=lambda m: None)
    assert str(raised.value) == (
        "dev has no successful release before 20260101T000000Z-cccccccccccc that runs "
        "another revision and was not rolled back from"
    )


class MinutesApart(datetime):
    """`datetime` whose now() is a minute later at each call: rollbacks minutes apart, as
    each waits for its deployment (release ids are to the second)."""

    calls = 0

    @classmethod
    def now(cls, tz=None):
        cls.calls += 1
        return datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=cls.calls)


def test_a_second_rollback_goes_further_back_never_to_what_was_rolled_back_from(
    scripted, tmp_path, monkeypatch
):
    """Releases Z, A, B; a rollback from B returns to A. A second rollback (A is wrong too)
    returns to Z, not to B, which the first left; a third has nowhere left to go."""
    monkeypatch.setattr(release_module, "datetime", MinutesApart)
    env = environment(BASE, tmp_path)
    z = succeeded("20260101T000000Z-cccccccccccc", BOOTSTRAP)
    a = succeeded("20260102T000000Z-cccccccccccc", RELEASED)
    b = succeeded("20260103T000000Z-cccccccccccc", NEXT)
    for record in (z, a, b):
        records.write(env.records_url, record)
    scripted.revision(RELEASED)
    expect_deployment(scripted, RELEASED, "ecs-svc/0009", "COMPLETED")
    first = rollback(env, ecs=scripted.ecs(), say=lambda m: None)
    assert (first["restores"], first["rollback_of"]) == (a["release_id"], b["release_id"])
    scripted.revision(BOOTSTRAP)
    expect_deployment(scripted, BOOTSTRAP, "ecs-svc/0010", "COMPLETED")
    second = rollback(env, ecs=scripted.ecs(), say=lambda m: None)
    assert (second["restores"], second["rollback_of"]) == (z["release_id"], first["release_id"])
    assert second["task_definition"] == BOOTSTRAP
    with pytest.raises(ReleaseError) as raised:
        rollback(env, ecs=scripted.ecs(), say=lambda m: None)
    assert str(raised.value) == (
        f"dev has no successful release before {second['release_id']} that runs another "
        "revision and was not rolled back from (rolled back from: "
        f"{b['release_id']}, {first['release_id']})"
    )


# -- a rollback withdraws the verification of what it leaves --------------------------

LEFT_TAG = promotion.verified_tag("a" * 40, MNIST8_SHA256)
TARGET_TAG = promotion.verified_tag("b" * 40, MNIST8_SHA256)


def ecr_withdrawing(tag: str, failure: str = "") -> tuple[Stubber, Callable[[], Ecr]]:
    """An Ecr over a stubbed ECR client that expects BatchDeleteImage of `tag` in dev's
    repository, answering it removed, or with the ImageFailure code `failure`."""
    client = boto3.client("ecr", region_name="us-east-1")
    stubber = Stubber(client)
    image_id = {"imageTag": tag}
    answer = (
        {"failures": [{"imageId": image_id, "failureCode": failure, "failureReason": "x"}]}
        if failure
        else {"imageIds": [{**image_id, "imageDigest": EXPIRED_DIGEST}], "failures": []}
    )
    expected = {"repositoryName": "onnx-ship-dev", "imageIds": [image_id]}
    stubber.add_response("batch_delete_image", answer, expected)
    stubber.activate()
    return stubber, lambda: Ecr(client)


def two_releases(env: Environment, left: dict, target: dict) -> None:
    """`target` released, then `left`: a rollback leaves `left` for `target`."""
    records.write(env.records_url, succeeded("20260101T000000Z-a", RELEASED, **target))
    records.write(env.records_url, succeeded("20260102T000000Z-b", NEXT, **left))


def rolled_back(scripted, env: Environment, ecr) -> list[str]:
    """Roll `env` back to RELEASED, as ECS completes it; what the rollback said."""
    scripted.revision(RELEASED)
    expect_deployment(scripted, RELEASED, "ecs-svc/0009", "COMPLETED")
    said: list[str] = []
    rollback(env, ecs=scripted.ecs(), ecr=ecr, say=said.append)
    return said


def test_a_rollback_withdraws_the_verification_of_the_code_and_model_it_leaves(scripted, tmp_path):
    """A rollback says the release it leaves is not good: its verified tag is removed
    (BatchDeleteImage by tag; the image stays) before the service changes, so prod refuses
    to promote that code and model until dev releases them again."""
    env = environment(BASE, tmp_path)
    two_releases(
        env,
        left={"git_sha": "d" * 40, "verified_tag": LEFT_TAG},
        target={"git_sha": "c" * 40, "verified_tag": TARGET_TAG},
    )
    stubber, ecr = ecr_withdrawing(LEFT_TAG)
    said = rolled_back(scripted, env, ecr)
    stubber.assert_no_pending_responses()
    assert said[:2] == [
        f"withdrew {LEFT_TAG}: an environment promoting from dev refuses this code and model "
        "until dev releases them again",
        f"rolling dev back from 20260102T000000Z-b to 20260101T000000Z-a ({RELEASED})",
    ]


def head_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_release_recorded_without_its_tag_is_withdrawn_by_its_commits_tree(
    scripted, tmp_path, monkeypatch
):
    """Records written before releases kept their tag: the tag comes from the commit's
    tree in the pipeline's checkout, as mark_verified made it, wherever the command runs."""
    env = environment(BASE, tmp_path)
    head = head_commit()
    two_releases(env, left={"git_sha": head, "verified_tag": None}, target={"git_sha": "c" * 40})
    stubber, ecr = ecr_withdrawing(promotion.commit_tag(head, MNIST8_SHA256, REPO))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    said = rolled_back(scripted, env, ecr)
    stubber.assert_no_pending_responses()
    assert said[0].startswith("withdrew verified-")


@pytest.mark.parametrize(
    ("left", "target"),
    [
        ({"git_sha": "d" * 40, "verified_tag": TARGET_TAG}, {"verified_tag": TARGET_TAG}),
        ({"git_sha": "c" * 40, "verified_tag": None}, {"git_sha": "c" * 40, "verified_tag": None}),
    ],
    ids=["another commit of the same tree", "the same commit, unknown here"],
)
def test_a_rollback_to_the_same_code_and_model_withdraws_nothing(scripted, tmp_path, left, target):
    """Back to another revision of the same code and model: their verification stands."""
    env = environment(BASE, tmp_path)
    two_releases(env, left=left, target=target)
    stubber, ecr = ecr_answering()  # expects no call at all
    said = rolled_back(scripted, env, ecr)
    stubber.assert_no_pending_responses()
    assert said[0].startswith("rolling dev back from")


def test_a_tag_no_image_holds_any_more_is_nothing_to_withdraw(scripted, tmp_path):
    env = environment(BASE, tmp_path)
    two_releases(env, left={"git_sha": "d" * 40, "verified_tag": LEFT_TAG}, target={})
    stubber, ecr = ecr_withdrawing(LEFT_TAG, failure="ImageNotFound")
    said = rolled_back(scripted, env, ecr)
    stubber.assert_no_pending_responses()
    assert said[0].startswith("rolling dev back from")


def refused(tag: str, code: str) -> tuple[Stubber, Callable[[], Ecr]]:
    """ECR refusing BatchDeleteImage of `tag` with the error `code`."""
    client = boto3.client("ecr", region_name="us-east-1")
    stubber = Stubber(client)
    stubber.add_client_error("batch_delete_image", code, "refused", 400)
    stubber.activate()
    return stubber, lambda: Ecr(client)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            "AccessDeniedException",
            "An error occurred (AccessDeniedException) when calling the BatchDeleteImage "
            "operation: refused; the role lacks a permission this call needs: "
            "pipeline/aws_calls.py lists what each role may do and terraform/modules grants "
            "it; apply the environment (nox -s apply -- <env>)",
        ),
        ("KmsError", f"ECR could not remove the tag onnx-ship-dev:{LEFT_TAG}: KmsError: x"),
    ],
)
def test_a_tag_ecr_will_not_remove_never_holds_the_rollback_up(scripted, tmp_path, answer, reason):
    """A rollback is what an operator runs when something is wrong: ECR refusing the tag's
    removal (a role without the grant, a failure of the image) does not stop it. The service
    goes back, the rollback is recorded, and the command then fails naming the tag that
    stays and the command that removes it."""
    env = environment(BASE, tmp_path)
    two_releases(env, left={"git_sha": "d" * 40, "verified_tag": LEFT_TAG}, target={})
    if answer == "KmsError":  # a failure of the image, in the answer
        stubber, ecr = ecr_withdrawing(LEFT_TAG, failure=answer)
    else:
        stubber, ecr = refused(LEFT_TAG, answer)
    scripted.revision(RELEASED)
    expect_deployment(scripted, RELEASED, "ecs-svc/0009", "COMPLETED")
    with pytest.raises(ReleaseError) as raised:
        rollback(env, ecs=scripted.ecs(), ecr=ecr, say=lambda m: None)
    stubber.assert_no_pending_responses()
    scripted.stubber.assert_no_pending_responses()
    latest = records.read_latest(env.records_url)
    assert (latest["task_definition"], latest["rollback_of"]) == (RELEASED, "20260102T000000Z-b")
    assert str(raised.value) == (
        f"dev is back on 20260101T000000Z-a ({RELEASED}), but the verified tag {LEFT_TAG} "
        f"stays in onnx-ship-dev ({reason}): an environment promoting from dev may still "
        "ship what this rollback left; remove the tag with `aws ecr batch-delete-image "
        f"--region us-east-1 --repository-name onnx-ship-dev --image-ids imageTag={LEFT_TAG}`"
    )


def test_a_commit_this_checkout_lacks_never_holds_the_rollback_up(scripted, tmp_path):
    """A record without its tag whose commit this checkout does not hold: the tree is
    unknown, so the rollback goes ahead and then says how to remove the tag."""
    env = environment(BASE, tmp_path)
    two_releases(env, left={"git_sha": "f" * 40, "verified_tag": None}, target={})
    stubber, ecr = ecr_answering()
    scripted.revision(RELEASED)
    expect_deployment(scripted, RELEASED, "ecs-svc/0009", "COMPLETED")
    with pytest.raises(ReleaseError) as raised:
        rollback(env, ecs=scripted.ecs(), ecr=ecr, say=lambda m: None)
    stubber.assert_no_pending_responses()
    assert records.read_latest(env.records_url)["task_definition"] == RELEASED
    commit = "f" * 40
    assert str(raised.value) == (
        f"dev is back on 20260101T000000Z-a ({RELEASED}), but the verified tag of commit "
        "ffffffffffff stays in onnx-ship-dev, since this checkout does not hold the commit: "
        "an environment promoting from dev may still ship it; remove the tag with "
        f"`git fetch origin {commit} && tree=$(git rev-parse --verify {commit}^{{tree}}) && "
        "aws ecr batch-delete-image --region us-east-1 --repository-name onnx-ship-dev "
        f"--image-ids imageTag=verified-$tree-{MNIST8_SHA256}`"
    )


# -- status ----------------------------------------------------------------------------


def expect_describe(
    scripted: ScriptedEcs,
    running: str,
    variables: dict[str, str] | None = None,
    *,
    image: str = "img:2",
    rollout: dict | None = None,
) -> None:
    """DescribeServices answering `running` (and `rollout` as its PRIMARY deployment), then
    DescribeTaskDefinition of `running`, whose container runs `image` with `variables`
    (a release's, for mnist-8 at commit c...c, by default)."""
    primary = rollout or deployment("ecs-svc/0002", running, "PRIMARY", "COMPLETED")
    scripted.stubber.add_response(
        "describe_services",
        {"services": [{**service(running, primary), "runningCount": 1, "desiredCount": 2}]},
        {"cluster": CLUSTER, "services": [SERVICE]},
    )
    if variables is None:
        variables = {"MODEL_NAME": "mnist-8", "MODEL_SHA256": MNIST8_SHA256, "GIT_SHA": "c" * 40}
    environment = [{"name": name, "value": value} for name, value in variables.items()]
    scripted.stubber.add_response(
        "describe_task_definition",
        {
            "taskDefinition": {
                "taskDefinitionArn": running,
                "family": FAMILY,
                "containerDefinitions": [
                    {"name": "sidecar", "image": "other"},
                    {"name": "server", "image": image, "environment": environment},
                ],
            }
        },
        {"taskDefinition": running},
    )


def test_status_reports_the_service_the_latest_release_and_what_is_served(
    scripted, endpoints, app, tmp_path
):
    base = endpoints.serve("svc-X", app)  # only the trailing "/" comes off the endpoint
    env = environment(base + "/", tmp_path)
    latest = succeeded("20260102T000000Z-cccccccccccc", RELEASED, image="img:2")
    records.write(env.records_url, latest)
    expect_describe(scripted, RELEASED)
    assert status(env, ecs=scripted.ecs()) == {
        "environment": "dev",
        "task_definition": RELEASED,
        "tasks": "1/2",
        "rollout": "COMPLETED",
        "release": latest["release_id"],
        "image": "img:2",
        "model": "mnist-8",
        "model_sha256": MNIST8_SHA256,
        "gate_accuracy": 0.99,
        "git_sha": "c" * 40,
        "in_sync": True,
        "health": "ready",
        "serving": f"mnist-8 sha256 {MNIST8_SHA256}",
    }
    assert endpoints.requests == [
        ("GET", f"{base}/v2/health/ready"),
        ("GET", f"{base}/v2/models/mnist-8"),
    ]
    assert not any("Authorization" in headers for headers in endpoints.headers)
    expect_describe(scripted, NEXT)
    assert status(env, ecs=scripted.ecs())["in_sync"] is False


def test_status_of_an_environment_never_released_and_unreachable(scripted, endpoints, tmp_path):
    env = environment(BASE, tmp_path)
    expect_describe(scripted, BOOTSTRAP, {"APP_ENV": "dev"}, image="placeholder")
    assert status(env, ecs=scripted.ecs()) == {
        "environment": "dev",
        "task_definition": BOOTSTRAP,
        "tasks": "1/2",
        "rollout": "COMPLETED",
        "release": None,
        "image": "placeholder",
        "model": None,
        "model_sha256": None,
        "gate_accuracy": None,
        "git_sha": None,
        "in_sync": False,
        "health": "not ready (unreachable (URLError))",
        "serving": "no release yet",
    }


def test_status_shows_what_runs_when_it_is_not_the_latest_release(
    scripted, endpoints, app, tmp_path
):
    """latest.json describes the last successful release; the service may run another
    revision (a release rolling out, one ECS stopped, a change made by hand): the image,
    model and commit come from the running revision, the gate's accuracy is not shown."""
    endpoints.serve(HOST, app)
    env = environment(BASE, tmp_path)
    latest = {
        **succeeded("20260103T000000Z-dddddddddddd", NEXT, image="img:3", git_sha="d" * 40),
        "model_sha256": OTHER_SHA256,
        "model_name": "mnist-12",
    }
    records.write(env.records_url, latest)
    expect_describe(
        scripted,
        RELEASED,
        rollout=deployment("ecs-svc/0002", RELEASED, "PRIMARY", "FAILED", CIRCUIT_BREAKER),
    )
    report = status(env, ecs=scripted.ecs())
    assert {k: report[k] for k in ("release", "in_sync", "gate_accuracy")} == {
        "release": latest["release_id"],
        "in_sync": False,
        "gate_accuracy": None,
    }
    assert (report["image"], report["git_sha"]) == ("img:2", "c" * 40)
    assert (report["model"], report["model_sha256"]) == ("mnist-8", MNIST8_SHA256)
    assert report["rollout"] == f"FAILED ({CIRCUIT_BREAKER})"
    assert report["serving"] == f"mnist-8 sha256 {MNIST8_SHA256}"


def test_status_of_a_revision_without_the_container_names_the_output():
    scripted = ScriptedEcs()
    with scripted.stubber:
        scripted.revision(RELEASED)  # its only container is "server"
        with pytest.raises(ReleaseError, match="has no container 'model'"):
            scripted.ecs().container(RELEASED, "model")


@pytest.mark.parametrize("desired", [0, 1])
def test_a_paused_environment_is_refused_naming_how_to_resume(scripted, tmp_path, desired):
    env = environment(BASE, tmp_path)
    scripted.stubber.add_response(
        "describe_services",
        {"services": [{**service(RELEASED), "desiredCount": desired}]},
        {"cluster": CLUSTER, "services": [SERVICE]},
    )
    if desired:
        assert refuse_paused(env, scripted.ecs()) is None
        return
    with pytest.raises(ReleaseError) as raised:
        refuse_paused(env, scripted.ecs())
    assert str(raised.value) == (
        f"dev is paused (its service {SERVICE} wants 0 tasks), so a release could not be "
        "smoke-tested. Nothing was changed. Resume it first: put min_capacity and "
        "max_capacity back in terraform/envs/dev/terraform.tfvars and run nox -s apply -- dev"
    )


def test_status_names_what_the_model_route_answers(scripted, endpoints, tmp_path):
    endpoints.serve(HOST, starting_app())
    env = environment(BASE, tmp_path)
    records.write(env.records_url, succeeded("20260102T000000Z-cccccccccccc", RELEASED))
    expect_describe(scripted, RELEASED)
    report = status(env, ecs=scripted.ecs())
    assert (report["health"], report["serving"]) == ("not ready (503)", "HTTP 503")
    records.write(
        env.records_url, succeeded("20260103T000000Z-cccccccccccc", RELEASED, gate={"accuracy": 1})
    )
    endpoints.apps.clear()
    expect_describe(scripted, RELEASED)
    report = status(env, ecs=scripted.ecs())
    assert report["serving"] == "unreachable (URLError)"
    assert report["gate_accuracy"] == 1


def test_status_with_a_token(scripted, endpoints, protected_app, tmp_path):
    endpoints.serve(HOST, protected_app)
    env = replace(environment(BASE, tmp_path), api_token_secret_arn="arn:aws:secretsmanager:x")
    records.write(env.records_url, succeeded("20260102T000000Z-cccccccccccc", RELEASED))
    expect_describe(scripted, RELEASED)
    with secret_holding(TOKEN):
        report = status(env, ecs=scripted.ecs())
    assert report["serving"] == f"mnist-8 sha256 {MNIST8_SHA256} (token accepted)"
    assert report["health"] == "ready"
    expect_describe(scripted, RELEASED)
    with secret_holding(TOKEN[::-1]):
        report = status(env, ecs=scripted.ecs())
    assert report["serving"] == (
        "refused: HTTP 401 (the token in api_token_secret_arn is not accepted)"
    )


def test_format_status_aligns_the_keys_asked_for():
    report = {"environment": "dev", "in_sync": True, "health": "ready"}
    assert format_status(report) == "environment  dev\nin_sync      True\nhealth       ready"
    assert format_status(report, ["health", "in_sync"]) == "health   ready\nin_sync  True"


# -- answers the real service never gives, from a stand-in ------------------------------


class StandIn:
    """A stand-in service whose routes answer what it is told: (status, body bytes)."""

    def __init__(self, ready=(200, b'{"ready": true}'), metadata=None, predict=None) -> None:
        served = json.dumps({"name": "mnist-8", "parameters": {"sha256": MNIST8_SHA256}})
        self.answers = {
            "ready": ready,
            "model": metadata or (200, served.encode()),
            # One answer for a row and for a batch of that row.
            "predict": predict or (200, b'{"prediction": 7, "predictions": [7]}'),
        }

    def app(self):
        import falcon
        import falcon.asgi

        answers = self.answers

        class Route:
            def __init__(self, name: str) -> None:
                self.name = name

            async def respond(self, resp) -> None:
                code, body = answers[self.name]
                resp.status = code
                resp.content_type = falcon.MEDIA_JSON
                resp.data = body

            async def on_get(self, req, resp, **params):
                await self.respond(resp)

            async def on_post(self, req, resp, **params):
                await self.respond(resp)

        app = falcon.asgi.App()
        app.add_route("/v2/health/ready", Route("ready"))
        app.add_route("/v2/models/{name}", Route("model"))
        app.add_route("/predict", Route("predict"))
        return app


ONE = SmokeImages(np.zeros((1, 1, 28, 28), dtype=np.float32), [7])


def test_an_empty_ready_answer_counts_as_ready(endpoints, scripted, tmp_path):
    endpoints.serve(HOST, StandIn(ready=(200, b"")).app())
    smoke_test(BASE, candidate(), ONE, timeout=1)
    env = environment(BASE, tmp_path)
    expect_describe(scripted, RELEASED)
    assert status(env, ecs=scripted.ecs())["health"] == "ready"


@pytest.mark.parametrize(
    "answer",
    [
        (200, b'{"name": "mnist-8"}'),  # no parameters
        (203, json.dumps({"parameters": {"sha256": MNIST8_SHA256}}).encode()),  # not 200
    ],
)
def test_only_a_200_naming_the_sha256_proves_the_model(endpoints, answer):
    endpoints.serve(HOST, StandIn(metadata=answer).app())
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(), ONE, timeout=1)
    assert str(raised.value) == (
        f"{BASE} serves model sha256 None (HTTP {answer[0]}), not the released {MNIST8_SHA256}"
    )


@pytest.mark.parametrize(
    ("answer", "got"),
    [
        ((200, b"[7]"), "[7]"),  # not an object
        ((201, b'{"prediction": 7}'), "{'prediction': 7}"),  # not 200
    ],
)
def test_only_a_200_object_names_a_prediction(endpoints, answer, got):
    endpoints.serve(HOST, StandIn(predict=answer).app())
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(), ONE, timeout=1)
    assert str(raised.value) == (
        f"smoke test failed on 1/1 images: image 0: expected 7, got {got} (HTTP {answer[0]})"
    )


@pytest.mark.parametrize(
    ("answer", "got"),
    [((200, b"[[7]]"), "[[7]]"), ((201, b'{"predictions": [7]}'), "{'predictions': [7]}")],
)
def test_only_a_200_object_names_the_batchs_predictions(endpoints, answer, got):
    """The single row answered right, the batch with `answer`."""
    stand_in = StandIn()
    calls = []
    original = stand_in.answers

    class Answers(dict):
        def __getitem__(self, name):
            if name == "predict":
                calls.append(name)
                return original["predict"] if len(calls) == 1 else answer
            return original[name]

    stand_in.answers = Answers(original)
    endpoints.serve(HOST, stand_in.app())
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(), ONE, timeout=1)
    assert str(raised.value) == (
        f"smoke test failed on the batch: expected [7], got {got} (HTTP {answer[0]})"
    )


def test_an_error_body_is_quoted_up_to_300_bytes(endpoints):
    body = b'{"error": "' + b"x" * 400 + b'"}'
    endpoints.serve(HOST, StandIn(predict=(400, body)).app())
    with pytest.raises(ReleaseError) as raised:
        smoke_test(BASE, candidate(), ONE, timeout=1)
    assert str(raised.value) == (
        f"smoke test failed on 1/1 images: image 0: expected 7, got {body[:300]!r} (HTTP 400)"
    )


def test_every_request_is_bounded_by_the_http_timeout(endpoints, app, smoke, scripted, tmp_path):
    endpoints.serve(HOST, app)
    smoke_test(BASE, candidate(), smoke, timeout=1)
    env = environment(BASE, tmp_path)
    records.write(env.records_url, succeeded("20260102T000000Z-cccccccccccc", RELEASED))
    expect_describe(scripted, RELEASED)
    status(env, ecs=scripted.ecs())
    assert endpoints.timeouts == [10] * len(endpoints.requests)


def test_smoke_images_and_classes_must_pair_up(endpoints, app, smoke):
    """Two images with four classes: refused before any prediction, not sent as a batch of
    four half images."""
    endpoints.serve(HOST, app)
    with pytest.raises(ValueError):
        smoke_test(BASE, candidate(), SmokeImages(smoke.images[:2], smoke.classes[:4]), timeout=1)
    assert [method for method, _ in endpoints.requests].count("POST") == 2


def test_register_of_a_container_without_command_or_variables(scripted):
    base = {
        "family": FAMILY,
        "taskDefinitionArn": BOOTSTRAP,
        "runtimePlatform": {},
        "containerDefinitions": [{"name": "server", "image": "onnx-ship-dev:bootstrap"}],
    }
    sent = {
        "family": FAMILY,
        "containerDefinitions": [
            {"name": "server", "image": IMAGE, "environment": [{"name": "GIT_SHA", "value": "a"}]}
        ],
    }
    expect_register(scripted, base, NEXT, sent, tags=[])
    assert scripted.ecs().register(BOOTSTRAP, "server", IMAGE, {"GIT_SHA": "a"}) == NEXT


@contextmanager
def client_of_the_environment(service_name: str, client) -> Iterator[None]:
    """Environment.client(service_name) gives `client`: what release, rollback and status
    use when no Ecs (or, for a rollback, no ECR) is passed."""

    def made(env, name):
        assert name == service_name, name
        return client

    with mock.patch.object(Environment, "client", made):
        yield


def test_release_rollback_and_status_use_the_environments_ecs(
    scripted, endpoints, app, smoke, tmp_path
):
    endpoints.serve(HOST, app)
    env = environment(BASE, tmp_path)
    records.write(env.records_url, succeeded("20260101T000000Z-cccccccccccc", BOOTSTRAP))
    expect_release_start(scripted, BOOTSTRAP, NEXT)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    scripted.revision(BOOTSTRAP)
    expect_deployment(scripted, BOOTSTRAP, "ecs-svc/0003", "COMPLETED")
    expect_describe(scripted, BOOTSTRAP)
    with client_of_the_environment("ecs", scripted.client):
        assert release(
            env, candidate(provenance={"verified_tag": SAME_CODE_TAG}), smoke, say=lambda m: None
        ).succeeded
        assert rollback(env, say=lambda m: None)["task_definition"] == BOOTSTRAP
        assert status(env)["in_sync"] is True


# -- more of what ECS may answer -------------------------------------------------------


def bare(answer: dict) -> dict:
    """A service answer as ECS gives it for a service without a circuit breaker."""
    return {
        **answer,
        "deployments": [
            {k: v for k, v in d.items() if k not in ("rolloutState", "rolloutStateReason")}
            for d in answer["deployments"]
        ],
    }


def test_without_rollout_state_the_wait_ends_when_the_service_runs_only_ours(scripted, clock):
    scripted.describe(
        bare(service(RELEASED, deployment("ecs-svc/0002", RELEASED, "PRIMARY", "COMPLETED")))
    )
    ecs = Ecs(scripted.client, poll_seconds=1, sleep=clock.sleep)
    ecs.wait_for_rollout(CLUSTER, SERVICE, "ecs-svc/0002", RELEASED, timeout=5)
    assert clock.slept == []


def test_a_service_listing_no_deployments_has_none_of_ours():
    with pytest.raises(ReleaseError) as raised:
        release_module.rollout_verdict({"taskDefinition": RELEASED}, "ecs-svc/0002", RELEASED)
    assert str(raised.value) == (
        "deployment ecs-svc/0002 is no longer the service's primary deployment "
        "(now none on nothing); ECS rolled it back or another deployment started"
    )


def test_a_failed_deployment_without_a_reason_says_nothing_more():
    failed = deployment("ecs-svc/0002", RELEASED, "PRIMARY", "FAILED")
    del failed["rolloutStateReason"]
    with pytest.raises(ReleaseError) as raised:
        release_module.rollout_verdict(service(RELEASED, failed), "ecs-svc/0002", RELEASED)
    assert str(raised.value) == "ECS marked deployment ecs-svc/0002 failed: "


def test_one_smoke_image_is_enough_with_a_token(endpoints, protected_app, smoke):
    endpoints.serve(HOST, protected_app)
    one = SmokeImages(smoke.images[:1], smoke.classes[:1])
    smoke_test(BASE, candidate(), one, timeout=1, token=TOKEN)
    assert [h.get("Authorization") for h in endpoints.headers][2:] == [f"Bearer {TOKEN}"] * 3


def test_status_of_metadata_without_parameters(endpoints, scripted, tmp_path):
    endpoints.serve(HOST, StandIn(metadata=(200, b'{"name": "mnist-8"}')).app())
    env = environment(BASE, tmp_path)
    records.write(env.records_url, succeeded("20260102T000000Z-cccccccccccc", RELEASED))
    expect_describe(scripted, RELEASED)
    assert status(env, ecs=scripted.ecs())["serving"] == "mnist-8 sha256 None"


class Ticking(datetime):
    """A clock a minute further on at every reading: what is read once must be used once."""

    readings = 0

    @classmethod
    def now(cls, tz=None):
        Ticking.readings += 1
        return datetime(2026, 5, 1, 12, 0, tzinfo=UTC) + timedelta(minutes=Ticking.readings)


def test_a_release_is_named_by_the_moment_it_started(
    scripted, endpoints, app, smoke, tmp_path, monkeypatch
):
    monkeypatch.setattr(release_module, "datetime", Ticking)
    endpoints.serve(HOST, app)
    env = environment(BASE, tmp_path)
    records.write(env.records_url, succeeded("20260101T000000Z-cccccccccccc", BOOTSTRAP))
    expect_release_start(scripted, BOOTSTRAP, NEXT)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    outcome = release(
        env,
        candidate(provenance={"verified_tag": SAME_CODE_TAG}),
        smoke,
        ecs=scripted.ecs(),
        say=lambda m: None,
    )
    started = datetime.fromisoformat(outcome.record["started_at"])
    assert outcome.record["release_id"] == release_id("a" * 40, started)
    scripted.revision(BOOTSTRAP)
    expect_deployment(scripted, BOOTSTRAP, "ecs-svc/0003", "COMPLETED")
    record = rollback(env, ecs=scripted.ecs(), say=lambda m: None)
    assert record["release_id"] == release_id(
        "c" * 40, datetime.fromisoformat(record["started_at"])
    )


def test_rollbacks_follow_deployments_without_rollout_state(
    scripted, endpoints, smoke, tmp_path, clock
):
    env = environment(BASE, tmp_path)
    expect_release_start(scripted, BOOTSTRAP, NEXT)
    expect_deployment(scripted, NEXT, "ecs-svc/0002", "COMPLETED")
    scripted.revision(BOOTSTRAP)
    back = deployment("ecs-svc/0003", BOOTSTRAP, "PRIMARY", "IN_PROGRESS")
    scripted.stubber.add_response(
        "update_service",
        {"service": service(BOOTSTRAP, back)},
        {"cluster": CLUSTER, "service": SERVICE, "taskDefinition": BOOTSTRAP},
    )
    scripted.describe(bare(service(BOOTSTRAP, {**back, "runningCount": 1})))
    outcome = release(
        env,
        candidate(),
        smoke,
        ecs=scripted.ecs(),
        say=lambda m: None,
        sleep=clock.sleep,
        smoke_timeout=0,
    )
    assert outcome.record["outcome"] == "rolled_back"
    # The same for an operator's rollback.
    records.write(env.records_url, succeeded("20260101T000000Z-cccccccccccc", BOOTSTRAP))
    records.write(env.records_url, succeeded("20260102T000000Z-cccccccccccc", RELEASED))
    scripted.revision(BOOTSTRAP)
    scripted.stubber.add_response(
        "update_service",
        {"service": service(BOOTSTRAP, back)},
        {"cluster": CLUSTER, "service": SERVICE, "taskDefinition": BOOTSTRAP},
    )
    scripted.describe(bare(service(BOOTSTRAP, {**back, "runningCount": 1})))
    assert rollback(env, ecs=scripted.ecs(), say=lambda m: None)["task_definition"] == BOOTSTRAP


def test_a_release_that_cannot_run_again_is_shipped_again_from_its_code(tmp_path):
    """With both commits known and different, the way back is a revert of the commits
    between them, deployed as usual; otherwise a commit with that release's code."""
    env = environment(BASE, tmp_path)
    old, new = "a" * 40, "b" * 40
    assert release_module._ship_again(env, {"git_sha": old}, {"git_sha": new}) == (
        f"nothing was changed; push a commit that reverts {old[:12]}..{new[:12]} "
        f"(git revert --no-edit {old}..{new}) and deploy it as usual (dev first; prod by "
        f"merging dev): it ships that code and model as a new release. {old[:12]} itself "
        "is refused, as older code than dev runs"
    )
    generic = (
        "nothing was changed; deploy a commit with that release's code and model, which "
        "registers a new revision of it"
    )
    for target, latest in (({}, {"git_sha": new}), ({"git_sha": old}, {}), ({"git_sha": old},) * 2):
        assert release_module._ship_again(env, target, latest) == generic


# -- waiting for a rollout: what the cases above leave out -----------------------------


def test_a_wait_that_only_ever_got_errors_ends_naming_the_last_one(scripted, clock):
    """No answer came before the bound, so there are no service events to quote: the
    message ends with the last ECS error."""
    scripted.throttled()
    scripted.throttled()
    ecs = Ecs(scripted.client, poll_seconds=10, sleep=clock.sleep)
    with pytest.raises(ReleaseError) as raised:
        ecs.wait_for_rollout(CLUSTER, SERVICE, "ecs-svc/0002", RELEASED, timeout=10)
    assert str(raised.value) == (
        f"deployment ecs-svc/0002 of {RELEASED} did not complete within 10 s; last ECS error: "
        "An error occurred (ThrottlingException) when calling the DescribeServices operation: "
        "Rate exceeded"
    )


def test_an_http_429_is_asked_again_whatever_its_error_code(scripted, clock):
    """HTTP 429 (Too Many Requests) is throttling even under an error code botocore's
    throttling list does not name."""
    scripted.stubber.add_client_error("describe_services", "RateLimited", "slow down", 429)
    scripted.describe(
        service(RELEASED, deployment("ecs-svc/0002", RELEASED, "PRIMARY", "COMPLETED"))
    )
    ecs = Ecs(scripted.client, poll_seconds=10, sleep=clock.sleep)
    ecs.wait_for_rollout(CLUSTER, SERVICE, "ecs-svc/0002", RELEASED, timeout=900)
    assert clock.slept == [10]


def test_an_update_answered_without_the_deployments_creation_time_is_followed(scripted):
    """The Deployment shape does not require `createdAt`: the update still names the
    deployment, and the wait follows it to COMPLETED."""
    ours = deployment("ecs-svc/0002", NEXT, "PRIMARY", "IN_PROGRESS")
    del ours["createdAt"]
    scripted.updated(service(NEXT, ours))
    scripted.describe(service(NEXT, {**ours, "rolloutState": "COMPLETED"}))
    ecs = scripted.ecs()
    assert ecs.update(CLUSTER, SERVICE, NEXT) == "ecs-svc/0002"
    ecs.wait_for_rollout(CLUSTER, SERVICE, "ecs-svc/0002", NEXT, timeout=5)


def test_a_deployment_replaced_after_our_update_quotes_the_events_since_the_update(scripted):
    """ECS lists ours no more and a newer one instead (a rollback, or someone's update): why
    is in the service's events since our update, and only those are quoted."""
    ours = "ecs-svc/0002"
    scripted.updated(
        service(RELEASED, deployment(ours, RELEASED, "PRIMARY", "IN_PROGRESS", created=UPDATED_AT))
    )
    newer = deployment("ecs-svc/0003", BOOTSTRAP, "PRIMARY", "IN_PROGRESS", created=AFTER)
    scripted.describe(with_events(service(BOOTSTRAP, newer), EVENTS[1], EVENTS[4]))
    ecs = scripted.ecs()
    ecs.update(CLUSTER, SERVICE, RELEASED)
    with pytest.raises(ReleaseError) as raised:
        ecs.wait_for_rollout(CLUSTER, SERVICE, ours, RELEASED, timeout=5)
    assert str(raised.value) == (
        f"deployment {ours} is no longer the service's primary deployment (now ecs-svc/0003 "
        f"on {BOOTSTRAP}); ECS rolled it back or another deployment started; ECS's latest "
        f"service events: {EVENTS[1][1]}"
    )


def test_a_deployment_created_the_moment_ours_was_is_not_a_view_from_before_the_update(
    scripted,
):
    """Only an answer listing deployments all created before ours is ECS's view from before
    the update; one created at the same moment is another update, so the wait fails at once
    instead of waiting for ours to appear."""
    ours = "ecs-svc/0002"
    scripted.updated(
        service(RELEASED, deployment(ours, RELEASED, "PRIMARY", "IN_PROGRESS", created=UPDATED_AT))
    )
    other = deployment("ecs-svc/0003", BOOTSTRAP, "PRIMARY", "IN_PROGRESS", created=UPDATED_AT)
    scripted.describe(service(BOOTSTRAP, other))
    ecs = scripted.ecs()
    ecs.update(CLUSTER, SERVICE, RELEASED)
    with pytest.raises(ReleaseError, match="no longer the service's primary deployment"):
        ecs.wait_for_rollout(CLUSTER, SERVICE, ours, RELEASED, timeout=0)


def test_the_events_quoted_start_at_our_deployments_creation_and_include_undated_ones(
    scripted,
):
    """The ServiceEvent shape does not require `createdAt`: an event without it may be ours
    and is quoted; so is one made the moment our deployment was, not one before it."""
    ours = "ecs-svc/0002"
    started = "(service onnx-ship-dev) has started 1 tasks: (task 5e2f)."
    failed = deployment(ours, RELEASED, "PRIMARY", "FAILED", CIRCUIT_BREAKER, created=UPDATED_AT)
    answer = with_events(service(RELEASED, failed), (UPDATED_AT, started), (BEFORE, "earlier"))
    answer["events"].insert(0, {"id": "undated", "message": PULL_FAILED})
    scripted.describe(answer)
    with pytest.raises(ReleaseError) as raised:
        scripted.ecs().wait_for_rollout(CLUSTER, SERVICE, ours, RELEASED, timeout=5)
    assert str(raised.value) == (
        f"ECS marked deployment {ours} failed: {CIRCUIT_BREAKER}; ECS's latest service events: "
        f"{PULL_FAILED} | {started}"
    )


# -- what ECS describes without the fields it need not give ----------------------------


def test_a_paused_environment_is_found_with_the_environments_ecs(scripted, tmp_path):
    env = environment(BASE, tmp_path)
    scripted.describe({**service(RELEASED), "desiredCount": 0})
    with (
        client_of_the_environment("ecs", scripted.client),
        pytest.raises(ReleaseError, match="dev is paused"),
    ):
        refuse_paused(env)


def test_a_revision_described_without_a_status_can_be_rolled_back_to(scripted, tmp_path):
    """The TaskDefinition shape does not require `status`: only a status other than ACTIVE
    stops a rollback."""
    env = environment(BASE, tmp_path)
    records.write(env.records_url, succeeded("20260101T000000Z-cccccccccccc", RELEASED))
    records.write(env.records_url, succeeded("20260102T000000Z-cccccccccccc", NEXT))
    scripted.stubber.add_response(
        "describe_task_definition",
        {
            "taskDefinition": {
                "taskDefinitionArn": RELEASED,
                "family": FAMILY,
                "containerDefinitions": [{"name": "server", "image": "img"}],
            }
        },
        {"taskDefinition": RELEASED},
    )
    expect_deployment(scripted, RELEASED, "ecs-svc/0009", "COMPLETED")
    assert rollback(env, ecs=scripted.ecs(), say=lambda m: None)["task_definition"] == RELEASED


def test_a_revision_described_without_containers_names_the_container_output(scripted):
    scripted.stubber.add_response(
        "describe_task_definition",
        {"taskDefinition": {"taskDefinitionArn": RELEASED, "family": FAMILY}},
        {"taskDefinition": RELEASED},
    )
    with pytest.raises(ReleaseError) as raised:
        scripted.ecs().container(RELEASED, "server")
    assert str(raised.value) == (
        f"{RELEASED} has no container 'server': check the container_name output"
    )


def test_status_of_a_service_without_deployments_running_a_container_without_variables(
    scripted, endpoints, tmp_path
):
    """A service ECS describes without `deployments`, whose revision's container has no
    `environment` (neither is required): no rollout, no model, no commit."""
    env = environment(BASE, tmp_path)
    scripted.describe({k: v for k, v in service(BOOTSTRAP).items() if k != "deployments"})
    scripted.revision(BOOTSTRAP)  # its container "server" runs "img", with no variables
    report = status(env, ecs=scripted.ecs())
    keys = ("task_definition", "rollout", "image", "model", "model_sha256", "git_sha", "serving")
    assert {k: report[k] for k in keys} == {
        "task_definition": BOOTSTRAP,
        "rollout": None,
        "image": "img",
        "model": None,
        "model_sha256": None,
        "git_sha": None,
        "serving": "no release yet",
    }


# -- the image a rollback returns to ---------------------------------------------------

DEV_REPOSITORY_URL = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/onnx-ship-dev"


def test_an_image_in_another_repository_is_not_looked_up(scripted, tmp_path):
    """Only this environment's repository expires images under a lifecycle policy the
    rollback knows of; an image by digest elsewhere is left to ECS."""
    env = environment(BASE, tmp_path)
    image = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/elsewhere@{EXPIRED_DIGEST}"
    records.write(
        env.records_url, succeeded("20260101T000000Z-cccccccccccc", RELEASED, image=image)
    )
    records.write(env.records_url, succeeded("20260102T000000Z-cccccccccccc", NEXT))
    scripted.revision(RELEASED)
    expect_deployment(scripted, RELEASED, "ecs-svc/0009", "COMPLETED")
    stubber, ecr = ecr_answering()  # expects no call at all
    assert rollback(env, ecs=scripted.ecs(), ecr=ecr, say=lambda m: None)["image"] == image
    stubber.assert_no_pending_responses()


def test_an_expired_image_is_found_when_the_repository_url_ends_with_a_slash(scripted, tmp_path):
    env = replace(environment(BASE, tmp_path), ecr_repository_url=f"{DEV_REPOSITORY_URL}/")
    image = f"{DEV_REPOSITORY_URL}@{EXPIRED_DIGEST}"
    released_image_then_newer(env, image)
    scripted.revision(RELEASED)
    stubber, ecr = ecr_answering(False)
    with pytest.raises(ReleaseError, match=r"is no longer in the onnx-ship-dev repository"):
        rollback(env, ecs=scripted.ecs(), ecr=ecr, say=lambda m: None)
    stubber.assert_no_pending_responses()
    assert records.read_latest(env.records_url)["task_definition"] == NEXT


# -- which verified tag a rollback withdraws, and what it says of one that stays -------


def test_a_rollback_to_the_same_commit_with_another_model_withdraws_the_model_it_leaves(
    scripted, tmp_path
):
    """The verification is of the code and the model together: the same code with another
    model is another verified tag, and the one the rollback leaves is withdrawn."""
    env = environment(BASE, tmp_path)
    other_model = promotion.verified_tag("b" * 40, OTHER_SHA256)
    two_releases(
        env,
        left={"git_sha": "c" * 40, "model_sha256": OTHER_SHA256, "verified_tag": other_model},
        target={"git_sha": "c" * 40, "verified_tag": TARGET_TAG},
    )
    stubber, ecr = ecr_withdrawing(other_model)
    said = rolled_back(scripted, env, ecr)
    stubber.assert_no_pending_responses()
    assert said[0] == (
        f"withdrew {other_model}: an environment promoting from dev refuses this code and "
        "model until dev releases them again"
    )


@pytest.mark.parametrize("unknown", ["git_sha", "model_sha256"])
def test_a_release_recorded_without_its_commit_or_model_has_no_tag_to_withdraw(
    scripted, tmp_path, unknown
):
    """Without its tag, and without both the commit and the model that would name one,
    there is nothing to withdraw: the rollback completes and says nothing of it."""
    env = environment(BASE, tmp_path)
    left = {"git_sha": head_commit(), "verified_tag": None, unknown: None}
    two_releases(env, left=left, target={"git_sha": "c" * 40})
    stubber, ecr = ecr_answering()  # expects no call at all
    said = rolled_back(scripted, env, ecr)
    stubber.assert_no_pending_responses()
    assert said == [
        f"rolling dev back from 20260102T000000Z-b to 20260101T000000Z-a ({RELEASED})",
        "no compaction_task_family output: the scheduled compaction is left as it is",
    ]
    assert records.read_latest(env.records_url)["task_definition"] == RELEASED


def test_a_rollback_withdraws_the_tag_with_the_environments_ecr(scripted, tmp_path):
    env = environment(BASE, tmp_path)
    two_releases(
        env,
        left={"git_sha": "d" * 40, "verified_tag": LEFT_TAG},
        target={"git_sha": "c" * 40, "verified_tag": TARGET_TAG},
    )
    stubber, _ = ecr_withdrawing(LEFT_TAG)
    with client_of_the_environment("ecr", stubber.client):
        said = rolled_back(scripted, env, None)
    stubber.assert_no_pending_responses()
    assert said[0].startswith(f"withdrew {LEFT_TAG}: ")
