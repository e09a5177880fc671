"""How a release judges an ECS rollout, against deployment lists as ECS reports them.

moto's ECS keeps no rollout state machine, so these tests script the ECS API with
botocore's Stubber: every response is validated against ECS's service model, and
the deployment lists follow the ECS API reference (`Deployment`: `status` PRIMARY,
ACTIVE or INACTIVE; `rolloutState` IN_PROGRESS, COMPLETED or FAILED with
`rolloutStateReason`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from pipeline import records
from pipeline.environment import Environment
from pipeline.release import (
    Candidate,
    Ecs,
    ReleaseError,
    primary_deployment,
    release,
    rollout_verdict,
)
from tests.service.conftest import MNIST8_SHA256

CLUSTER = SERVICE = FAMILY = "onnx-ship-dev"
ACCOUNT = "123456789012"
BOOTSTRAP = f"arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/{FAMILY}:1"
RELEASED = f"arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/{FAMILY}:2"
NEXT = f"arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/{FAMILY}:3"
CIRCUIT_BREAKER = (
    "ECS deployment circuit breaker: tasks failed to start. "
    "(CannotPullContainerError: ... onnx-ship-dev:bootstrap: not found)"
)
ALARM = "Deployment failed: alarm onnx-ship-dev-target-5xx in ALARM state during bake time."


def deployment(
    deployment_id: str,
    task_definition: str,
    status: str,
    state: str,
    reason: str = "",
    *,
    created: datetime = datetime(2026, 1, 1, tzinfo=UTC),
) -> dict:
    return {
        "id": deployment_id,
        "status": status,
        "taskDefinition": task_definition,
        "desiredCount": 1,
        "runningCount": 1 if state == "COMPLETED" else 0,
        "pendingCount": 0,
        "failedTasks": 10 if state == "FAILED" else 0,
        "createdAt": created,
        "updatedAt": created,
        "launchType": "FARGATE",
        "rolloutState": state,
        "rolloutStateReason": reason or f"ECS deployment {deployment_id} {state.lower()}.",
    }


def service(task_definition: str, *deployments: dict) -> dict:
    return {
        "serviceName": SERVICE,
        "clusterArn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/{CLUSTER}",
        "status": "ACTIVE",
        "taskDefinition": task_definition,
        "desiredCount": 1,
        "runningCount": 1,
        "deployments": list(deployments),
    }


# An earlier deployment the circuit breaker failed (its image could not be pulled), which
# ECS still lists as ACTIVE while a new one rolls out.
FAILED_EARLIER = deployment("ecs-svc/0001", BOOTSTRAP, "ACTIVE", "FAILED", CIRCUIT_BREAKER)


def offline_client(service: str) -> Any:
    """A real boto3 client of `service` that never reaches AWS (answers come from Stubber)."""
    return boto3.client(
        service,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


class ScriptedEcs:
    """A real boto3 ECS client whose answers are scripted, in order."""

    def __init__(self) -> None:
        self.client = offline_client("ecs")
        self.stubber = Stubber(self.client)

    def describe(self, answer: dict) -> None:
        self.stubber.add_response("describe_services", {"services": [answer]})

    def throttled(self) -> None:
        self.stubber.add_client_error(
            "describe_services", "ThrottlingException", "Rate exceeded", 400
        )

    def updated(self, answer: dict) -> None:
        self.stubber.add_response("update_service", {"service": answer})

    def revision(self, arn: str, status: str = "ACTIVE") -> None:
        """DescribeTaskDefinition of `arn`, a revision in `status` (what a failed release
        asks of the revision it returns to)."""
        self.stubber.add_response(
            "describe_task_definition",
            {
                "taskDefinition": {
                    "taskDefinitionArn": arn,
                    "family": FAMILY,
                    "containerDefinitions": [{"name": "server", "image": "img"}],
                    "status": status,
                }
            },
            {"taskDefinition": arn},
        )

    def revision_gone(self, arn: str) -> None:
        """DescribeTaskDefinition of `arn`, a revision ECS deleted once nothing referenced
        it: ECS answers ClientException "Unable to describe task definition."."""
        self.stubber.add_client_error(
            "describe_task_definition",
            "ClientException",
            "Unable to describe task definition.",
            400,
            expected_params={"taskDefinition": arn},
        )

    def ecs(self) -> Ecs:
        return Ecs(self.client, poll_seconds=0, sleep=lambda seconds: None)


@pytest.fixture
def scripted() -> Iterator[ScriptedEcs]:
    ecs = ScriptedEcs()
    with ecs.stubber:
        yield ecs
        ecs.stubber.assert_no_pending_responses()


# -- judging one rollout ---------------------------------------------------------------


def test_an_earlier_failed_deployment_still_listed_is_not_ours(scripted):
    ours = "ecs-svc/0002"
    for state in ("IN_PROGRESS", "IN_PROGRESS", "COMPLETED"):
        scripted.describe(
            service(RELEASED, deployment(ours, RELEASED, "PRIMARY", state), FAILED_EARLIER)
        )
    scripted.ecs().wait_for_rollout(CLUSTER, SERVICE, ours, RELEASED, timeout=5)


def test_our_deployment_failed_by_the_circuit_breaker_stops_the_wait_with_its_reason(scripted):
    ours = "ecs-svc/0002"
    scripted.describe(service(RELEASED, deployment(ours, RELEASED, "PRIMARY", "IN_PROGRESS")))
    scripted.describe(
        service(RELEASED, deployment(ours, RELEASED, "PRIMARY", "FAILED", CIRCUIT_BREAKER))
    )
    with pytest.raises(ReleaseError, match="CannotPullContainerError"):
        scripted.ecs().wait_for_rollout(CLUSTER, SERVICE, ours, RELEASED, timeout=5)


def test_an_alarm_rollback_during_the_bake_time_is_a_failure_not_a_success(scripted):
    """Old tasks are gone and ours run, but COMPLETED never came: ECS rolled back."""
    ours, rollback = "ecs-svc/0003", "ecs-svc/0004"
    scripted.describe(service(NEXT, deployment(ours, NEXT, "PRIMARY", "IN_PROGRESS")))
    scripted.describe(
        service(
            RELEASED,
            deployment(rollback, RELEASED, "PRIMARY", "IN_PROGRESS"),
            deployment(ours, NEXT, "ACTIVE", "FAILED", ALARM),
        )
    )
    with pytest.raises(ReleaseError, match=r"no longer the service's primary.*in ALARM state"):
        scripted.ecs().wait_for_rollout(CLUSTER, SERVICE, ours, NEXT, timeout=5)


# An update at 12:00: the deployment it made, and the one it replaced (created earlier).
UPDATED_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BEFORE = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
AFTER = datetime(2026, 3, 1, 12, 5, tzinfo=UTC)


def test_an_answer_from_before_our_update_is_read_as_in_progress_not_as_a_rollback(scripted):
    """ECS's API is eventually consistent: the first DescribeServices after UpdateService
    may still show the service as it was, our deployment not yet listed."""
    ours = "ecs-svc/0002"
    old = deployment("ecs-svc/0001", BOOTSTRAP, "PRIMARY", "COMPLETED", created=BEFORE)
    scripted.updated(
        service(
            RELEASED,
            deployment(ours, RELEASED, "PRIMARY", "IN_PROGRESS", created=UPDATED_AT),
            dict(old, status="ACTIVE"),
        )
    )
    scripted.describe(service(BOOTSTRAP, old))  # the service as it was before the update
    scripted.describe(
        service(
            RELEASED,
            deployment(ours, RELEASED, "PRIMARY", "IN_PROGRESS", created=UPDATED_AT),
            dict(old, status="ACTIVE"),
        )
    )
    scripted.describe(
        service(RELEASED, deployment(ours, RELEASED, "PRIMARY", "COMPLETED", created=UPDATED_AT))
    )
    ecs = scripted.ecs()
    assert ecs.update(CLUSTER, SERVICE, RELEASED) == ours
    ecs.wait_for_rollout(CLUSTER, SERVICE, ours, RELEASED, timeout=5)


def test_a_newer_deployment_without_ours_is_still_a_rollback(scripted):
    """A rollback, or anyone's later update, is created after ours: not a stale view."""
    ours = "ecs-svc/0002"
    scripted.updated(
        service(RELEASED, deployment(ours, RELEASED, "PRIMARY", "IN_PROGRESS", created=UPDATED_AT))
    )
    scripted.describe(
        service(
            BOOTSTRAP,
            deployment("ecs-svc/0003", BOOTSTRAP, "PRIMARY", "IN_PROGRESS", created=AFTER),
        )
    )
    ecs = scripted.ecs()
    ecs.update(CLUSTER, SERVICE, RELEASED)
    with pytest.raises(ReleaseError, match="no longer the service's primary deployment"):
        ecs.wait_for_rollout(CLUSTER, SERVICE, ours, RELEASED, timeout=5)


def test_a_view_from_before_our_update_that_never_changes_ends_at_the_bound(scripted):
    ours = "ecs-svc/0002"
    old = deployment("ecs-svc/0001", BOOTSTRAP, "PRIMARY", "COMPLETED", created=BEFORE)
    scripted.updated(
        service(RELEASED, deployment(ours, RELEASED, "PRIMARY", "IN_PROGRESS", created=UPDATED_AT))
    )
    scripted.describe(service(BOOTSTRAP, old))
    ecs = scripted.ecs()
    ecs.update(CLUSTER, SERVICE, RELEASED)
    with pytest.raises(ReleaseError, match=f"deployment {ours} .* did not complete within 0 s"):
        ecs.wait_for_rollout(CLUSTER, SERVICE, ours, RELEASED, timeout=0)


def with_events(answer: dict, *events: tuple[datetime, str]) -> dict:
    """`answer` with service events, newest first, as DescribeServices lists them."""
    listed = [
        {"id": f"e{n}", "createdAt": at, "message": text} for n, (at, text) in enumerate(events)
    ]
    return {**answer, "events": listed}


# A first deployment whose image cannot be pulled, as ECS tells it in the service's events
# (the circuit breaker's own reason says only that tasks failed to start).
PULL_FAILED = (
    "(service onnx-ship-dev) (task 5e2f) failed to start: CannotPullContainerError: pull image "
    "manifest has been retried 5 time(s): failed to resolve ref 123456789012.dkr.ecr.us-east-1"
    ".amazonaws.com/onnx-ship-dev@sha256:9f: not found"
)
EVENTS = (
    (datetime(2026, 3, 1, 12, 4, tzinfo=UTC), PULL_FAILED),
    (
        datetime(2026, 3, 1, 12, 3, tzinfo=UTC),
        "(service onnx-ship-dev) has started 1 tasks: (task 5e2f).",
    ),
    (datetime(2026, 3, 1, 12, 2, tzinfo=UTC), PULL_FAILED.replace("5e2f", "41aa")),
    (
        datetime(2026, 3, 1, 12, 1, tzinfo=UTC),
        "(service onnx-ship-dev) has started 1 tasks: (task 41aa).",
    ),
    (BEFORE, "(service onnx-ship-dev) has reached a steady state."),
)


def test_a_failed_rollout_quotes_the_service_events_since_it_began(scripted):
    """Why the tasks failed (here: the image could not be pulled) is in the service's events,
    not in the circuit breaker's reason: the error quotes the latest few of our deployment."""
    ours = "ecs-svc/0002"
    failed = deployment(ours, RELEASED, "PRIMARY", "FAILED", CIRCUIT_BREAKER, created=UPDATED_AT)
    scripted.describe(with_events(service(RELEASED, failed), *EVENTS))
    with pytest.raises(ReleaseError) as raised:
        scripted.ecs().wait_for_rollout(CLUSTER, SERVICE, ours, RELEASED, timeout=5)
    assert str(raised.value) == (
        f"ECS marked deployment {ours} failed: {CIRCUIT_BREAKER}; ECS's latest service events: "
        f"{EVENTS[0][1]} | {EVENTS[1][1]} | {EVENTS[2][1]}"
    )


def test_a_rollout_that_never_completes_quotes_the_service_events_since_it_began(scripted):
    ours = "ecs-svc/0002"
    going = deployment(ours, RELEASED, "PRIMARY", "IN_PROGRESS", created=UPDATED_AT)
    scripted.updated(service(RELEASED, going))
    scripted.describe(with_events(service(RELEASED, going), EVENTS[1], EVENTS[4]))
    ecs = scripted.ecs()
    ecs.update(CLUSTER, SERVICE, RELEASED)
    with pytest.raises(ReleaseError) as raised:
        ecs.wait_for_rollout(CLUSTER, SERVICE, ours, RELEASED, timeout=0)
    assert str(raised.value) == (
        f"deployment {ours} of {RELEASED} did not complete within 0 s; ECS's latest service "
        f"events: {EVENTS[1][1]}"
    )


def test_throttling_during_the_wait_is_retried(scripted):
    ours = "ecs-svc/0002"
    scripted.describe(service(RELEASED, deployment(ours, RELEASED, "PRIMARY", "IN_PROGRESS")))
    scripted.throttled()
    scripted.throttled()
    scripted.describe(service(RELEASED, deployment(ours, RELEASED, "PRIMARY", "COMPLETED")))
    scripted.ecs().wait_for_rollout(CLUSTER, SERVICE, ours, RELEASED, timeout=5)


def test_an_api_that_never_answers_ends_at_the_bound_naming_the_last_error(scripted):
    scripted.throttled()
    ecs = Ecs(scripted.client, poll_seconds=0, sleep=lambda seconds: None)
    with pytest.raises(ReleaseError, match=r"did not complete within 0 s; last ECS error.*Rate"):
        ecs.wait_for_rollout(CLUSTER, SERVICE, "ecs-svc/0002", RELEASED, timeout=0)


# -- whole releases ----------------------------------------------------------------------


def environment(endpoint_url: str, records_dir) -> Environment:
    return Environment(
        environment="dev",
        aws_region="us-east-1",
        cluster_name=CLUSTER,
        service_name=SERVICE,
        task_family=FAMILY,
        task_definition_arn=BOOTSTRAP,
        container_name="server",
        ecr_repository_url=f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/onnx-ship-dev",
        capture_url="s3://bucket/capture",
        deployments_url=str(records_dir),
        models_url="s3://bucket/models",
        endpoint_url=endpoint_url,
    )


def candidate(git_sha: str) -> Candidate:
    return Candidate(
        image=f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/onnx-ship-dev@sha256:{'1' * 64}",
        git_sha=git_sha,
        model_name="mnist-8",
        model_url=f"s3://bucket/models/{MNIST8_SHA256}/mnist-8.onnx",
        model_sha256=MNIST8_SHA256,
        gate={"accuracy": 0.9891, "passed": True},
    )


def registers(scripted: ScriptedEcs, revision: str) -> None:
    scripted.stubber.add_response(
        "describe_task_definition",
        {
            "taskDefinition": {
                "family": FAMILY,
                "taskDefinitionArn": BOOTSTRAP,
                "containerDefinitions": [
                    {
                        "name": "server",
                        "image": "onnx-ship-dev:bootstrap",
                        "environment": [{"name": "APP_ENV", "value": "dev"}],
                    }
                ],
            }
        },
        {"taskDefinition": BOOTSTRAP, "include": ["TAGS"]},
    )
    scripted.stubber.add_response(
        "register_task_definition",
        {"taskDefinition": {"taskDefinitionArn": revision, "family": FAMILY}},
    )
    scripted.revision(revision)  # found: the service may be pointed at it


@pytest.mark.integration
def test_a_release_completes_beside_an_earlier_failed_deployment(
    scripted, mnist8_server, smoke, tmp_path
):
    ours = deployment("ecs-svc/0002", RELEASED, "PRIMARY", "IN_PROGRESS")
    scripted.describe(service(BOOTSTRAP, FAILED_EARLIER))
    registers(scripted, RELEASED)
    scripted.updated(service(RELEASED, ours, FAILED_EARLIER))
    scripted.describe(service(RELEASED, ours, FAILED_EARLIER))
    scripted.describe(service(RELEASED, {**ours, "rolloutState": "COMPLETED", "runningCount": 1}))
    env = environment(mnist8_server.url, tmp_path)
    outcome = release(
        env,
        candidate("a" * 40),
        smoke,
        ecs=scripted.ecs(),
        say=lambda m: None,
        stable_timeout=5,
        smoke_timeout=10,
    )
    assert outcome.succeeded, outcome.reason
    assert records.read_latest(env.records_url)["deployment_id"] == "ecs-svc/0002"


@pytest.mark.integration
def test_nothing_is_recorded_as_released_before_completed(scripted, mnist8_server, smoke, tmp_path):
    """ECS rolls back during the bake time: the release returns to the last release
    and records the rollback; `latest.json` keeps the last release."""
    env = environment(mnist8_server.url, tmp_path)
    records.write(
        env.records_url,
        {
            "release_id": "20260101T000000Z-aaaaaaaaaaaa",
            "model_sha256": MNIST8_SHA256,
            "outcome": "succeeded",
            "gate": {"accuracy": 0.9891},
            "task_definition": RELEASED,
        },
    )
    ours = deployment("ecs-svc/0003", NEXT, "PRIMARY", "IN_PROGRESS")
    ecs_rollback = deployment("ecs-svc/0004", RELEASED, "PRIMARY", "IN_PROGRESS")
    scripted.describe(
        service(RELEASED, deployment("ecs-svc/0002", RELEASED, "PRIMARY", "COMPLETED"))
    )
    registers(scripted, NEXT)
    scripted.updated(service(NEXT, ours))
    scripted.describe(service(NEXT, ours))
    scripted.describe(
        service(RELEASED, ecs_rollback, deployment("ecs-svc/0003", NEXT, "ACTIVE", "FAILED", ALARM))
    )
    # Our rollback: ECS is already rolling back to the same revision, so UpdateService
    # starts nothing new and we follow ECS's own rollback deployment to COMPLETED.
    scripted.revision(RELEASED)
    scripted.updated(service(RELEASED, ecs_rollback))
    scripted.describe(service(RELEASED, {**ecs_rollback, "rolloutState": "COMPLETED"}))
    outcome = release(
        env,
        candidate("b" * 40),
        smoke,
        ecs=scripted.ecs(),
        say=lambda m: None,
        stable_timeout=5,
        smoke_timeout=10,
    )
    assert not outcome.succeeded and "in ALARM state" in outcome.reason
    assert records.read_latest(env.records_url)["task_definition"] == RELEASED
    attempt = next(r for r in records.list_records(env.records_url) if r.get("git_sha"))
    assert attempt["outcome"] == "rolled_back"


# -- the verdict on one describe_services answer, message by message ----------------


def without_rollout_state(*deployments: dict) -> list[dict]:
    """Deployments as a service without a circuit breaker reports them: no rolloutState."""
    return [
        {k: v for k, v in d.items() if k not in ("rolloutState", "rolloutStateReason")}
        for d in deployments
    ]


def test_the_primary_deployment_is_the_one_marked_primary():
    old = deployment("ecs-svc/0001", BOOTSTRAP, "ACTIVE", "COMPLETED")
    ours = deployment("ecs-svc/0002", RELEASED, "PRIMARY", "IN_PROGRESS")
    assert primary_deployment(service(RELEASED, old, ours)) == ours
    assert primary_deployment(service(RELEASED, old)) == {}
    assert primary_deployment({}) == {}


def test_a_deployment_no_longer_primary_is_named_with_the_one_that_is():
    ours = deployment("ecs-svc/0002", RELEASED, "ACTIVE", "IN_PROGRESS", reason="rolled back")
    now = deployment("ecs-svc/0003", BOOTSTRAP, "PRIMARY", "IN_PROGRESS")
    with pytest.raises(ReleaseError) as raised:
        rollout_verdict(service(BOOTSTRAP, ours, now), "ecs-svc/0002", RELEASED)
    assert str(raised.value) == (
        f"deployment ecs-svc/0002 is no longer the service's primary deployment "
        f"(now ecs-svc/0003 on {BOOTSTRAP}): rolled back"
    )
    with pytest.raises(ReleaseError) as raised:
        rollout_verdict(service(BOOTSTRAP), "ecs-svc/0002", RELEASED)
    assert str(raised.value) == (
        "deployment ecs-svc/0002 is no longer the service's primary deployment "
        "(now none on nothing); ECS rolled it back or another deployment started"
    )


def test_a_failed_rollout_names_ecs_reason_and_progress_is_not_done():
    failed = deployment("ecs-svc/0002", RELEASED, "PRIMARY", "FAILED", reason=CIRCUIT_BREAKER)
    with pytest.raises(ReleaseError) as raised:
        rollout_verdict(service(RELEASED, failed), "ecs-svc/0002", RELEASED)
    assert str(raised.value) == f"ECS marked deployment ecs-svc/0002 failed: {CIRCUIT_BREAKER}"
    going = deployment("ecs-svc/0002", RELEASED, "PRIMARY", "IN_PROGRESS")
    assert rollout_verdict(service(RELEASED, going), "ecs-svc/0002", RELEASED) is False
    done = deployment("ecs-svc/0002", RELEASED, "PRIMARY", "COMPLETED")
    assert rollout_verdict(service(RELEASED, done), "ecs-svc/0002", RELEASED) is True


def test_without_a_rollout_state_done_means_only_ours_running_at_the_desired_count():
    running = deployment("ecs-svc/0002", RELEASED, "PRIMARY", "COMPLETED")
    starting = deployment("ecs-svc/0002", RELEASED, "PRIMARY", "IN_PROGRESS")
    draining = deployment("ecs-svc/0001", BOOTSTRAP, "ACTIVE", "COMPLETED")

    def verdict(task_definition: str, *deployments: dict) -> bool:
        answer = {**service(task_definition), "deployments": without_rollout_state(*deployments)}
        return rollout_verdict(answer, "ecs-svc/0002", RELEASED)

    assert verdict(RELEASED, running) is True
    assert verdict(RELEASED, starting) is False  # 0 of 1 running
    assert verdict(RELEASED, running, draining) is False  # the old one still drains
    assert verdict(BOOTSTRAP, running) is False  # the service points elsewhere


def test_an_inactive_service_is_named_with_the_fix(scripted):
    scripted.stubber.add_response(
        "describe_services",
        {"services": [{**service(RELEASED), "status": "INACTIVE"}], "failures": []},
        {"cluster": CLUSTER, "services": [SERVICE]},
    )
    with pytest.raises(ReleaseError) as raised:
        scripted.ecs().service(CLUSTER, SERVICE)
    assert str(raised.value) == (
        f"ECS service {SERVICE!r} is not active in cluster {CLUSTER!r}: "
        "run the environment's terraform apply first"
    )


def test_a_missing_service_is_named_too(scripted):
    scripted.stubber.add_response(
        "describe_services",
        {"services": [], "failures": [{"arn": SERVICE, "reason": "MISSING"}]},
        {"cluster": CLUSTER, "services": [SERVICE]},
    )
    with pytest.raises(ReleaseError, match="is not active in cluster"):
        scripted.ecs().service(CLUSTER, SERVICE)


def test_the_wait_sleeps_its_poll_interval_between_answers(scripted):
    going = deployment("ecs-svc/0002", RELEASED, "PRIMARY", "IN_PROGRESS")
    done = deployment("ecs-svc/0002", RELEASED, "PRIMARY", "COMPLETED")
    scripted.describe(service(RELEASED, going))
    scripted.describe(service(RELEASED, going))
    scripted.describe(service(RELEASED, done))
    slept: list[float] = []
    ecs = Ecs(scripted.client, poll_seconds=0.25, sleep=slept.append)
    ecs.wait_for_rollout(CLUSTER, SERVICE, "ecs-svc/0002", RELEASED, timeout=5)
    assert slept == [0.25, 0.25]
