"""Release an image and a model to an environment's ECS service, verify it, roll back on failure.

A release registers a new task definition revision (Terraform's revision of the
family, with the new image by digest and the model reference in its environment),
points the service at it, waits until ECS reports that deployment COMPLETED, then
smoke-tests the environment's endpoint, and then gives the scheduled compaction task
the released image (pipeline.compaction_task). Any failure after the service update
puts the service back on the last successful release. Every attempt leaves a
deployment record.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from botocore.retries.standard import (
    RetryContext,
    ThrottledRetryableChecker,
    TransientRetryableChecker,
)

from pipeline import REPO, compaction_task, interrupts, promotion, records, revisions
from pipeline import registry as registries
from pipeline.alarms import AlarmsMoved, AlarmWatch, DeploymentAlarms, watched_alarms
from pipeline.deadline import TRY_SECONDS
from pipeline.environment import Environment
from pipeline.records import RecordError
from service import aws
from service.auth import bearer_header

STABLE_TIMEOUT_SECONDS = 15 * 60
SMOKE_TIMEOUT_SECONDS = 5 * 60
POLL_SECONDS = 10.0
# Waits between DescribeTaskDefinition calls confirming a new revision before the service
# is pointed at it: about 30 s in all (ECS API reference, eventual consistency: "Confirm
# the state of the resource before you run a command to modify it", backing off).
CONFIRM_WAITS_SECONDS = (1.0, 2.0, 4.0, 8.0, 15.0)
# A revision DescribeTaskDefinition no longer answers for (Ecs.revision_status).
NOT_FOUND = "deleted (ECS no longer describes it)"
HTTP_TIMEOUT_SECONDS = 10
# How many of ECS's latest service events a failed or timed-out rollout quotes.
EVENTS_NAMED = 3


class ReleaseError(Exception):
    """The release failed; the message says where and why."""


# -- which ECS errors a wait outlives ---------------------------------------------------

_THROTTLED = ThrottledRetryableChecker()
_TRANSIENT = TransientRetryableChecker()


def transient(error: BotoCoreError | ClientError) -> bool:
    """Whether asking again may get another answer: throttling (its error codes or HTTP
    429), a server error (HTTP 5xx: ECS's ServerException, InternalFailure,
    ServiceUnavailable), a timeout or a dropped connection. These are the errors
    botocore's standard retry mode retries, judged by botocore's own checkers (AWS SDKs
    and Tools reference guide, "Retry behavior"). Anything else (AccessDeniedException,
    ExpiredTokenException, ClusterNotFoundException, missing credentials) gets the same
    answer every time (AWS "Common Errors": each is a 4xx)."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        context = RetryContext(attempt_number=1, parsed_response=error.response)
        return (
            status >= 500
            or status == 429
            or _THROTTLED.is_retryable(context)
            or _TRANSIENT.is_retryable(context)
        )
    return _TRANSIENT.is_retryable(RetryContext(attempt_number=1, caught_exception=error))


_GRANT = (
    "grant the deploy role ecs:DescribeServices on the service (terraform/modules/ci "
    "grants what pipeline/aws_calls.py lists) and apply the environment"
)


def refusal(error: BotoCoreError | ClientError, cluster: str, service: str) -> ReleaseError:
    """The ReleaseError for an ECS error `transient` says no retry changes: the error,
    and what to do about it (`service.aws.fix`)."""
    return ReleaseError(
        f"ECS refused to describe service {service!r} in cluster {cluster!r}: {error}; "
        f"{aws.fix(error, grant=_GRANT)}"
    )


@dataclass(frozen=True)
class Candidate:
    """What a release ships."""

    image: str  # repository@sha256:digest
    git_sha: str
    model_name: str
    model_url: str
    model_sha256: str
    gate: dict[str, Any]
    batched_url: str = ""  # the batch-capable copy, when the gate made and proved one
    batched_sha256: str = ""
    labels: tuple[str, ...] = ()  # the model's class labels (model.toml's [model] labels)
    # Where the image comes from when it is promoted (pipeline.promotion.Provenance.record()).
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SmokeImages:
    """A handful of real test images with the class the gated model gives each."""

    images: np.ndarray  # [N, ...] exactly as the service expects them
    classes: list[int]


@dataclass
class Outcome:
    record: dict[str, Any]
    task_definition: str
    previous_task_definition: str
    succeeded: bool
    reason: str = ""
    log: list[str] = field(default_factory=list)


def release_id(git_sha: str, now: datetime | None = None) -> str:
    """`<UTC time, %Y%m%dT%H%M%SZ>-<first 12 of the git sha>`: sorts by time, names a file."""
    moment = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{moment}-{git_sha[:12]}"


class Ecs:
    """The few ECS calls a release needs, and how it judges a rollout.

    `client` is a boto3 ECS client (`Environment.client("ecs")` gives one in the
    environment's region with botocore's standard retries).
    """

    def __init__(
        self,
        client: Any,
        *,
        poll_seconds: float = POLL_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._poll = poll_seconds
        self._sleep = sleep
        # Deployment id -> its createdAt, as UpdateService answered (ECS's own clock).
        self._started: dict[str, datetime] = {}

    def using(self, client: Any) -> Ecs:
        """This Ecs, its calls made on `client` (e.g. one bound to a deadline)."""
        other = copy.copy(self)
        other._client = client
        return other

    def service(self, cluster: str, service: str) -> dict[str, Any]:
        answer = self._client.describe_services(cluster=cluster, services=[service])
        found = answer.get("services") or []
        if not found or found[0].get("status") != "ACTIVE":
            raise ReleaseError(
                f"ECS service {service!r} is not active in cluster {cluster!r}: "
                "run the environment's terraform apply first"
            )
        return found[0]

    def revision_status(self, task_definition: str) -> str:
        """The revision's `status`: ACTIVE, INACTIVE once deregistered, DELETE_IN_PROGRESS
        once deleted (ECS developer guide, "Amazon ECS task definition states"), or
        NOT_FOUND when DescribeTaskDefinition no longer answers for it: "You can only
        describe INACTIVE task definitions while an active task or service references
        them" (ECS API reference, DescribeTaskDefinition), and a deleted revision is
        removed for good once nothing references it; ECS then answers ClientException
        ("Unable to describe task definition"). Any other error is raised."""
        try:
            answer = self._client.describe_task_definition(taskDefinition=task_definition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ClientException":
                raise
            return NOT_FOUND
        return answer["taskDefinition"].get("status", "ACTIVE")

    def container(self, task_definition: str, name: str) -> dict[str, Any]:
        """The container definition `name` of the revision `task_definition`, as
        DescribeTaskDefinition answers it (its `image`, its `environment`); ReleaseError when
        the revision has no container of that name."""
        answer = self._client.describe_task_definition(taskDefinition=task_definition)
        for definition in answer["taskDefinition"].get("containerDefinitions", []):
            if definition.get("name") == name:
                return definition
        raise ReleaseError(
            f"{task_definition} has no container {name!r}: check the container_name output"
        )

    def register(
        self, base_arn: str, container: str, image: str, environment: dict[str, str]
    ) -> str:
        """A new revision of `base_arn`'s family: `base_arn` with `container`'s image
        replaced, its `command` removed (the image's own runs; Terraform's revision runs a
        placeholder until the first release) and `environment` set over its variables;
        every other field is kept, its tags included (`revisions.described`)."""
        base, tags = revisions.described(self._client, base_arn)
        containers = []
        found = False
        for definition in base["containerDefinitions"]:
            definition = dict(definition)
            if definition["name"] == container:
                found = True
                merged = {item["name"]: item["value"] for item in definition.get("environment", [])}
                merged.update(environment)
                definition["image"] = image
                definition.pop("command", None)
                definition["environment"] = [
                    {"name": k, "value": v} for k, v in sorted(merged.items())
                ]
            containers.append(definition)
        if not found:
            raise ReleaseError(
                f"task definition {base_arn} has no container {container!r}; check the "
                "environment's container_name output"
            )
        request = revisions.kept_fields(base, tags=tags)
        registered = self._client.register_task_definition(
            **request, containerDefinitions=containers
        )
        arn = registered["taskDefinition"]["taskDefinitionArn"]
        self._confirm(arn)
        return arn

    def _confirm(self, task_definition: str) -> None:
        """Return once DescribeTaskDefinition finds `task_definition`, a revision just
        registered: the ECS API is eventually consistent, and an UpdateService naming a
        revision ECS does not see yet fails ("TaskDefinition not found"). ECS answers a
        revision it does not find with ClientException; any other error is raised.
        Raises ReleaseError when it is still not found after CONFIRM_WAITS_SECONDS."""
        for wait in (*CONFIRM_WAITS_SECONDS, None):
            try:
                self._client.describe_task_definition(taskDefinition=task_definition)
                return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ClientException":
                    raise
                if wait is None:
                    raise ReleaseError(
                        f"ECS registered {task_definition} but still does not find it after "
                        f"{sum(CONFIRM_WAITS_SECONDS):.0f} s ({exc}); run the deploy again"
                    ) from None
                self._sleep(wait)

    def register_compaction(self, env: Environment, released: str) -> str:
        """The compaction family's new revision, running `released`'s image (see
        pipeline.compaction_task); "" when `env` names no compaction family."""
        if not env.compaction_task_family:
            return ""
        try:
            return compaction_task.register(
                self._client,
                released,
                compaction_family=env.compaction_task_family,
                container=env.container_name,
                command=compaction_task.command(env.environment, env.capture_url),
                task_role_arn=env.compaction_role_arn,
            )
        except KeyError as missing:
            raise ReleaseError(f"{missing.args[0]}; check the container_name output") from None

    def update(self, cluster: str, service: str, task_definition: str) -> str:
        """Point the service at `task_definition`; the id of the deployment this starts.

        UpdateService answers with the service, whose PRIMARY deployment is the one
        the update created (ECS API reference, `Deployment`).
        """
        answer = self._client.update_service(
            cluster=cluster, service=service, taskDefinition=task_definition
        )
        primary = primary_deployment(answer["service"])
        if "id" in primary and "createdAt" in primary:
            self._started[primary["id"]] = primary["createdAt"]
        return primary.get("id", "")

    def wait_for_rollout(
        self, cluster: str, service: str, deployment_id: str, task_definition: str, timeout: float
    ) -> None:
        """Wait until our deployment's `rolloutState` is COMPLETED; ReleaseError otherwise.

        Only our deployment is judged: the PRIMARY one with id `deployment_id` (older
        deployments, e.g. an earlier FAILED one still listed as ACTIVE, are ECS's to
        drain). It fails at once when ECS marks it FAILED (circuit breaker or alarm) or
        when it stops being PRIMARY (ECS rolled it back, or another deployment
        started). With deployment alarms, COMPLETED comes only after the bake time, and
        ECS may roll back until then ("Deployment failure detection", ECS developer
        guide). Transient errors from the ECS API (`transient`: throttling, 5xx,
        network) are retried by botocore and then by this loop until `timeout` seconds
        have passed; any other (access denied, expired credentials, no such cluster)
        raises ReleaseError at once, naming the fix (`refusal`).
        """
        deadline = time.monotonic() + timeout
        last_error = events = ""
        started = self._started.get(deployment_id)
        while True:
            try:
                current = self.service(cluster, service)
            except (BotoCoreError, ClientError) as exc:
                if not transient(exc):
                    raise refusal(exc, cluster, service) from exc
                last_error = f"; last ECS error: {exc}"
            else:
                last_error = ""
                events = latest_events(current, started)
                if rollout_verdict(current, deployment_id, task_definition, started=started):
                    return
            if time.monotonic() >= deadline:
                raise ReleaseError(
                    f"deployment {deployment_id} of {task_definition} did not complete within "
                    f"{timeout:.0f} s{last_error}{events}"
                )
            self._sleep(self._poll)


def primary_deployment(service: dict[str, Any]) -> dict[str, Any]:
    """The service's PRIMARY deployment (the newest), or {} when it lists none."""
    return next((d for d in service.get("deployments", []) if d.get("status") == "PRIMARY"), {})


def rollout_verdict(
    service: dict[str, Any],
    deployment_id: str,
    task_definition: str,
    *,
    started: datetime | None = None,
) -> bool:
    """True when our deployment completed, False while it is in progress.

    Raises ReleaseError when ECS failed it or it is no longer PRIMARY. Deployments
    of services without a circuit breaker carry no `rolloutState`: they count as
    completed when the service runs only our revision at its desired count.

    `started` is our deployment's createdAt as UpdateService answered. The ECS API is
    eventually consistent (ECS API reference: "the result of an API command you run that
    affects your Amazon ECS resources might not be immediately visible to all subsequent
    commands"), so a DescribeServices soon after the update may still show the service
    as it was: an answer that lists only deployments created before ours is such a view,
    and counts as in progress. A rollback or any later deployment is newer than ours.
    """
    listed = service.get("deployments", [])
    ours = next((d for d in listed if d.get("id") == deployment_id), None)
    if ours is None and started is not None and _before(listed, started):
        return False
    since = (ours or {}).get("createdAt", started)
    if ours is None or ours.get("status") != "PRIMARY":
        primary = primary_deployment(service)
        reason = (ours or {}).get("rolloutStateReason", "")
        raise ReleaseError(
            f"deployment {deployment_id} is no longer the service's primary deployment "
            f"(now {primary.get('id', 'none')} on {primary.get('taskDefinition', 'nothing')})"
            + (f": {reason}" if reason else "; ECS rolled it back or another deployment started")
            + latest_events(service, since)
        )
    state = ours.get("rolloutState")
    if state == "FAILED":
        raise ReleaseError(
            f"ECS marked deployment {deployment_id} failed: {ours.get('rolloutStateReason', '')}"
            + latest_events(service, since)
        )
    if state == "COMPLETED":
        return True
    if state is None:
        return (
            service.get("taskDefinition") == task_definition
            and len(service.get("deployments", [])) == 1
            and ours.get("runningCount") == ours.get("desiredCount")
        )
    return False


def latest_events(service: dict[str, Any], since: datetime | None) -> str:
    """`; ECS's latest service events: <newest> | ...`, at most EVENTS_NAMED of the
    service's events from `since` on, or "" when there are none (or no `since`: events
    of an earlier deployment would mislead).

    A failed deployment's rolloutStateReason says only that tasks failed; why (a task that
    could not pull its image or reach a secret, failed the load balancer's health check,
    or found no capacity) is in the service's events, the latest 100 of which
    DescribeServices returns newest first (ECS API reference, Service, `events`).
    """
    if since is None:
        return ""
    messages = [
        str(event["message"])
        for event in service.get("events", [])
        if event.get("message") and event.get("createdAt", since) >= since
    ][:EVENTS_NAMED]
    return "; ECS's latest service events: " + " | ".join(messages) if messages else ""


def _before(deployments: list[dict[str, Any]], started: datetime) -> bool:
    """Whether every deployment listed was created before `started` (and one is listed)."""
    return bool(deployments) and all(
        "createdAt" in d and d["createdAt"] < started for d in deployments
    )


# -- smoke test ---------------------------------------------------------------


def _get_json(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=bearer_header(token) if token else {})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def _post_json(url: str, document: Any, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(document).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **(bearer_header(token) if token else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()[:300]


def smoke_test(
    endpoint: str,
    candidate: Candidate,
    smoke: SmokeImages,
    timeout: float,
    poll_seconds: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    token: str | None = None,
) -> None:
    """Ready, the candidate's model (by sha256), and the right class for every smoke image.

    With `token` (the environment's bearer token, Environment.api_token), every model
    route is called with it, and a prediction without it must be refused with 401, so a
    service that serves without authentication fails the smoke test too. Raises
    ReleaseError naming the first check that failed.
    """
    base = endpoint.rstrip("/")
    _wait_until_ready(base, timeout, poll_seconds, sleep)
    if token is not None:
        status, _ = _post_json(f"{base}/predict", {"data": smoke.images[0].reshape(-1).tolist()})
        if status != 401:
            raise ReleaseError(
                f"{base}/predict answered HTTP {status} to a request without a token: the "
                "service does not require authentication (is API_TOKENS in the task "
                "definition's secrets?)"
            )
    _check_served_model(base, candidate, token)
    _check_predictions(base, smoke, token)


def _wait_until_ready(
    base: str, timeout: float, poll_seconds: float, sleep: Callable[[float], None]
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _ = _get_json(f"{base}/v2/health/ready")
        except OSError as exc:
            status = f"unreachable ({exc})"
        if status == 200:
            return
        if time.monotonic() >= deadline:
            raise ReleaseError(f"{base} did not become ready within {timeout:.0f} s: {status}")
        sleep(poll_seconds)


def _check_served_model(base: str, candidate: Candidate, token: str | None) -> None:
    status, metadata = _get_json(f"{base}/v2/models/{candidate.model_name}", token)
    if status == 401:
        raise ReleaseError(
            f"{base} refused the pipeline's token (HTTP 401): the environment's "
            "api_token_secret_arn output must name the secret the task definition injects"
            if token
            else f"{base} requires a bearer token (HTTP 401), and the environment names no "
            "api_token_secret_arn to read it from"
        )
    served = (metadata or {}).get("parameters", {}).get("sha256") if status == 200 else None
    if served != candidate.model_sha256:
        raise ReleaseError(
            f"{base} serves model sha256 {served} (HTTP {status}), not the released "
            f"{candidate.model_sha256}"
        )


def _check_predictions(base: str, smoke: SmokeImages, token: str | None) -> None:
    """Each smoke image alone, then all of them as one batch."""
    wrong = []
    for index, (image, expected) in enumerate(zip(smoke.images, smoke.classes, strict=True)):
        status, body = _post_json(f"{base}/predict", {"data": image.reshape(-1).tolist()}, token)
        got = body.get("prediction") if status == 200 and isinstance(body, dict) else body
        if got != expected:
            wrong.append(f"image {index}: expected {expected}, got {got} (HTTP {status})")
    if wrong:
        raise ReleaseError(
            f"smoke test failed on {len(wrong)}/{len(smoke.classes)} images: "
            + "; ".join(wrong[:3])
        )
    rows = smoke.images.reshape(len(smoke.classes), -1).tolist()
    status, body = _post_json(f"{base}/predict", {"data": rows}, token)
    got = body.get("predictions") if status == 200 and isinstance(body, dict) else body
    if got != smoke.classes:
        raise ReleaseError(
            f"smoke test failed on the batch: expected {smoke.classes}, got {got} (HTTP {status})"
        )


# -- the release ----------------------------------------------------------------


# What a release sets in the container's environment; Terraform owns every other
# variable (APP_ENV, PREDICTION_LOG_URL, ports, timeouts...) and the rest of the task.
RELEASE_VARIABLES = (
    "MODEL_URL",
    "MODEL_SHA256",
    "MODEL_NAME",
    "MODEL_BATCHED_URL",
    "MODEL_BATCHED_SHA256",
    "MODEL_LABELS",
    "GIT_SHA",
)


def task_environment(candidate: Candidate) -> dict[str, str]:
    """The variables a release owns (RELEASE_VARIABLES), for `candidate`."""
    return {
        "MODEL_URL": candidate.model_url,
        "MODEL_SHA256": candidate.model_sha256,
        "MODEL_NAME": candidate.model_name,
        # Always set, empty when absent, so a copy from an earlier release never lingers.
        "MODEL_BATCHED_URL": candidate.batched_url,
        "MODEL_BATCHED_SHA256": candidate.batched_sha256,
        "MODEL_LABELS": json.dumps(list(candidate.labels)) if candidate.labels else "",
        "GIT_SHA": candidate.git_sha,
    }


# A failure anywhere after the service update: ours, the ECS API's, or the network's.
RELEASE_FAILURES = (ReleaseError, AlarmsMoved, BotoCoreError, ClientError, OSError)
# What an interrupted release keeps for its record's PUT, before interrupts.deadline():
# one try of a client bound to a deadline, and the time to make that client and the record.
RECORD_SECONDS = TRY_SECONDS + 0.5


def release(
    env: Environment,
    candidate: Candidate,
    smoke: SmokeImages,
    *,
    ecs: Ecs | None = None,
    alarms: DeploymentAlarms | None = None,
    stable_timeout: float = STABLE_TIMEOUT_SECONDS,
    smoke_timeout: float = SMOKE_TIMEOUT_SECONDS,
    say: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Ship `candidate` to `env`; roll back and record the failure when it does not hold.

    The new revision is Terraform's task definition (`env.task_definition_arn`) with the
    candidate's image and RELEASE_VARIABLES, so a Terraform change to the task reaches the
    service with the next release. It succeeds only once ECS reports our deployment
    COMPLETED (`Deployment`, ECS API reference: PRIMARY, `rolloutState`), the smoke test
    passes, the deployment alarms ECS ignored (`alarms.AlarmWatch`) stayed out of ALARM and the
    compaction family has a revision with the released image; otherwise the service returns
    to the last successful release (`latest.json`), or, for a first release, to the
    revision it ran before (`_where_a_failure_returns`). Every attempt leaves a record.

    `smoke.images`: [N, *item_shape] arrays; timeouts in seconds (`stable_timeout` for each
    ECS deployment, ours and a rollback's). A failure after the service update
    (ReleaseError, AlarmsMoved, botocore's errors, OSError) is returned as an Outcome with
    `succeeded` False; what fails before it (the API token, DescribeServices,
    DescribeAlarms, RegisterTaskDefinition, `latest.json`) or writing the record raises
    MissingEnvironment, ReleaseError, ClientError or RecordError.

    Interrupted after the service update (a cancelled or timed-out job), it puts back
    what did not hold, records it, and raises again (`_put_back_if_interrupted`)."""
    ecs = ecs or Ecs(env.client("ecs"))
    token = env.api_token()  # before anything changes: an unreadable secret stops here
    record = _new_record(env, candidate, datetime.now(UTC))
    running = ecs.service(env.cluster_name, env.service_name)
    record["previous_task_definition"] = previous = running["taskDefinition"]
    back = _Return(*_where_a_failure_returns(env, previous))
    watch = _alarm_watch(env, running, alarms, say, sleep)
    record["task_definition"] = new = ecs.register(
        env.task_definition_arn, env.container_name, candidate.image, task_environment(candidate)
    )
    say(f"registered {new} (image {candidate.image})")
    with _put_back_if_interrupted(env, ecs, record, back, say):
        try:
            _roll_out(env, ecs, record, new, watch, stable_timeout, say)
            say(f"completed; smoke-testing {env.endpoint_url}")
            smoke_test(env.endpoint_url, candidate, smoke, smoke_timeout, sleep=sleep, token=token)
            watch.bake()
            with interrupts.deferred():  # compaction follows only a release that held
                record["compaction_task_definition"] = _follow_with_compaction(env, ecs, new, say)
                back.verified = True
        except RELEASE_FAILURES as failure:
            back.failure = str(failure)
            outcome, reason = _restore(env, ecs, back, stable_timeout, say)
            _finish(env, record, outcome, reason, back)
            return Outcome(record, new, previous, False, reason)
        _finish(env, record, "succeeded", "", back)
    say(f"released {record['release_id']} to {env.environment}")
    return Outcome(record, new, previous, True)


def _roll_out(
    env: Environment,
    ecs: Ecs,
    record: dict[str, Any],
    revision: str,
    watch: AlarmWatch,
    timeout: float,
    say: Callable[[str], None],
) -> None:
    """Point the service at `revision` and wait for our deployment (`Ecs.wait_for_rollout`),
    noting the deployment and the alarms' state as it started in `record`."""
    deployment = ecs.update(env.cluster_name, env.service_name, revision)
    record["deployment_id"] = deployment
    record.update(watch.deployment_started())
    say(f"service {env.service_name}: deployment {deployment} of {revision}; waiting for COMPLETED")
    ecs.wait_for_rollout(env.cluster_name, env.service_name, deployment, revision, timeout)


@dataclass
class _Return:
    """Where a release that does not hold returns the service (`_where_a_failure_returns`),
    and how far it got: what an interrupt must know."""

    target: str  # the revision it returns to
    instead: str  # the one it returns to when `target` is no longer ACTIVE (_restorable)
    verified: bool = False  # the release held: smoke test, alarms, compaction
    failure: str = ""  # why the release failed, once it has
    started: str = ""  # the revision the rollback pointed the service at, once it has
    verdict: tuple[str, str] | None = None  # (outcome, reason) once the rollback ended
    recorded: bool = False  # the record is written: nothing is left to do


@contextmanager
def _put_back_if_interrupted(
    env: Environment,
    ecs: Ecs,
    record: dict[str, Any],
    back: _Return,
    say: Callable[[str], None],
) -> Iterator[None]:
    """On KeyboardInterrupt inside, unless the record is written already: record what
    the release got to, and raise the interrupt again. Once it held (`back.verified`) it
    is recorded as succeeded; once its rollback ended, with that rollback's verdict;
    otherwise the service is pointed back (`back`, unless its rollback has started)
    without waiting for that deployment, and the release is recorded as failed.

    Three ECS calls at most (DescribeTaskDefinition twice, UpdateService) and the record's
    PUT, all ending by `interrupts.deadline()` (`pipeline.deadline`; the ECS calls
    RECORD_SECONDS before it, which the PUT keeps): a GitHub runner kills a cancelled step
    10 s after its SIGINT ("Workflow cancellation reference"); ECS then completes the
    deployment by itself. What the ECS API raises meanwhile (throttling, a try that timed
    out, no time left) goes into the record's reason; a record that cannot be written is
    said, and the interrupt still raised."""
    try:
        yield
    except KeyboardInterrupt:
        if back.recorded:
            raise
        by = interrupts.deadline()
        if back.verified:
            outcome, reason = "succeeded", ""
        elif back.verdict is not None:
            outcome, reason = back.verdict
        else:
            if by is not None:
                ecs = ecs.using(env.client("ecs", by=by - RECORD_SECONDS))
            outcome, reason = "failed", _interrupted_reason(env, ecs, back, say)
        try:
            _finish(env, record, outcome, reason, back, by=by)
        except RecordError as failure:
            say(f"the release's record could not be written: {failure}")
        raise


def _interrupted_reason(
    env: Environment, ecs: Ecs, back: _Return, say: Callable[[str], None]
) -> str:
    """The record's reason for a release interrupted before it held or rolled back,
    having pointed the service back unless its rollback had started."""
    if back.failure:
        why = f"{back.failure}; then interrupted"
    else:
        why = "interrupted before the release was verified"
    if back.started:
        done = f"while the rollback to {back.started} ran, not waited for"
    else:
        done = _put_back_at_once(env, ecs, back, say)
    return f"{why} {done}; nox -s status -- {env.environment} shows what runs"


def _put_back_at_once(env: Environment, ecs: Ecs, back: _Return, say: Callable[[str], None]) -> str:
    """Point the service at `back.target` (or `back.instead`) without waiting for the
    deployment; what was done, for the record's reason."""
    say(f"interrupted; pointing {env.service_name} back at {back.target} without waiting")
    try:
        back.started = _restorable(env, ecs, back.target, back.instead, say)
        deployment = ecs.update(env.cluster_name, env.service_name, back.started)
    except RELEASE_FAILURES as failure:
        return f"and the rollback to {back.target} could not start ({failure}): deploy again"
    return f"and the rollback to {back.started} started (deployment {deployment}), not waited for"


def _finish(
    env: Environment,
    record: dict[str, Any],
    outcome: str,
    reason: str = "",
    back: _Return | None = None,
    *,
    by: float | None = None,
) -> None:
    """Close `record` with its outcome (and the failure's reason) and write it, whole
    (`interrupts.deferred`), by `by` when given (`_write_record`); `back.recorded` once
    written."""
    with interrupts.deferred():  # <id>.json and latest.json both, or the error
        record.update(outcome=outcome, **({"reason": reason} if reason else {}))
        record["finished_at"] = datetime.now(UTC).isoformat()
        _write_record(env, record, by)
        if back is not None:
            back.recorded = True


def _write_record(env: Environment, record: dict[str, Any], by: float | None = None) -> None:
    """`records.write` into the environment's records; by `by` when given (a
    time.monotonic(): an interrupted command's), with the environment's S3 clients bound
    to it, the attempt's file keeping RECORD_SECONDS for `latest.json` when both are
    written. Raises RecordError."""
    if by is None:
        records.write(env.records_url, record)
        return

    def s3_client(name: str) -> Any:
        last = name == records.LATEST or record["outcome"] != "succeeded"
        return env.client("s3", by=by if last else by - RECORD_SECONDS)

    records.write(env.records_url, record, s3_client=s3_client)


def _alarm_watch(
    env: Environment,
    service: dict[str, Any],
    alarms: DeploymentAlarms | None,
    say: Callable[[str], None],
    sleep: Callable[[float], None],
) -> AlarmWatch:
    """The alarm watch of a release of `service` (a DescribeServices answer), read once
    before the update; no CloudWatch client or call for a service without alarms."""
    names = watched_alarms(service)
    if names and alarms is None:
        alarms = DeploymentAlarms(env.client("cloudwatch"), sleep=sleep)
    watch = AlarmWatch(alarms, names, say)
    watch.read_before_update()
    return watch


def refuse_paused(env: Environment, ecs: Ecs | None = None) -> None:
    """ReleaseError when `env`'s service wants no task (`desiredCount` 0: its
    `min_capacity` and `max_capacity` are 0, README "Pausing an environment"): a release
    would roll out to no task and fail its smoke test against the load balancer's 503."""
    ecs = ecs or Ecs(env.client("ecs"))
    if ecs.service(env.cluster_name, env.service_name).get("desiredCount") == 0:
        raise ReleaseError(
            f"{env.environment} is paused (its service {env.service_name} wants 0 tasks), so "
            "a release could not be smoke-tested. Nothing was changed. Resume it first: put "
            f"min_capacity and max_capacity back in terraform/envs/{env.environment}/"
            f"terraform.tfvars and run nox -s apply -- {env.environment}"
        )


def _where_a_failure_returns(env: Environment, previous: str) -> tuple[str, str]:
    """(the revision a failed release returns to, the one instead when that one is no
    longer ACTIVE: `_restorable`): the last successful release's (`latest.json`) and none,
    else, for a first release, what runs now (Terraform's revision serving its
    placeholder) and Terraform's current revision."""
    last_release = (records.read_latest(env.records_url) or {}).get("task_definition")
    if last_release:
        return last_release, ""
    return previous, env.task_definition_arn


def _new_record(env: Environment, candidate: Candidate, started: datetime) -> dict[str, Any]:
    """The deployment record of a release of `candidate` started at `started`, so far."""
    return {
        "release_id": release_id(candidate.git_sha, started),
        "environment": env.environment,
        "git_sha": candidate.git_sha,
        "image": candidate.image,
        "model_name": candidate.model_name,
        "model_url": candidate.model_url,
        "model_sha256": candidate.model_sha256,
        "gate": candidate.gate,
        **candidate.provenance,
        "started_at": started.isoformat(),
    }


def _follow_with_compaction(
    env: Environment, ecs: Ecs, released: str, say: Callable[[str], None]
) -> str:
    """Point the scheduled compaction at the image of `released`, now the last successful
    release; a failure here fails the release (the service returns to the last good one,
    whose image compaction still runs)."""
    compaction = ecs.register_compaction(env, released)
    say(
        f"scheduled compaction runs {compaction}"
        if compaction
        else "no compaction_task_family output: the scheduled compaction is left as it is"
    )
    return compaction


def _restore(
    env: Environment, ecs: Ecs, back: _Return, timeout: float, say: Callable[[str], None]
) -> tuple[str, str]:
    """Put the service back on `back.target` (or `back.instead`, see _restorable) after
    `back.failure`, and wait for that deployment: (outcome, reason), also `back.verdict`."""
    say(f"release failed: {back.failure}; rolling back to {back.target}")
    target = back.target
    try:
        target = _restorable(env, ecs, back.target, back.instead, say)
        with interrupts.deferred():  # an interrupt then knows the rollback has started
            deployment = ecs.update(env.cluster_name, env.service_name, target)
            back.started = target
        ecs.wait_for_rollout(env.cluster_name, env.service_name, deployment, target, timeout)
    except RELEASE_FAILURES as rollback_failure:
        back.verdict = (
            "failed",
            f"{back.failure}; the rollback to {target} did not complete: {rollback_failure}",
        )
    else:
        back.verdict = ("rolled_back", back.failure)
    return back.verdict


def _restorable(
    env: Environment, ecs: Ecs, target: str, instead: str, say: Callable[[str], None]
) -> str:
    """`target` when it is ACTIVE, else `instead` (for a first release, Terraform's
    revision: the `task_definition_arn` output) when that one is ACTIVE.

    ECS starts no deployment of a revision that is not ACTIVE: "you can't update an
    existing service to reference an INACTIVE task definition" (ECS API reference,
    DeregisterTaskDefinition; DeleteTaskDefinitions says the same of DELETE_IN_PROGRESS).
    A first release returns to the revision that ran before it, which a Terraform apply
    that changed the task, or a person, may have deregistered since. Raises ReleaseError
    saying what to do when neither revision can run.
    """
    status = ecs.revision_status(target)
    if status == "ACTIVE":
        return target
    if not instead:
        problem = f"{target}, the last successful release's revision, is {status}"
        fix = "deploy that release's commit again, which registers a new revision of it"
    else:
        fix = (
            f"run nox -s apply -- {env.environment}, which registers Terraform's revision "
            "anew, then deploy again"
        )
        if instead == target:
            problem = f"{target}, Terraform's revision, is {status}"
        else:
            fallback = ecs.revision_status(instead)
            if fallback == "ACTIVE":
                say(f"{target} is {status}; rolling back to Terraform's revision {instead} instead")
                return instead
            problem = f"{target} is {status} and Terraform's revision {instead} is {fallback}"
    raise ReleaseError(
        f"{problem}, and ECS cannot point a service at a revision that is not ACTIVE: {fix}"
    )


def _rollback_target(
    env: Environment, history: list[dict[str, Any]], latest: dict[str, Any]
) -> dict[str, Any]:
    """The successful release a rollback returns to: the latest one before `latest` that
    runs another revision than `latest` and was never rolled back from. So a second
    rollback goes further back, as a second one is asked for when the first release it
    returned to is wrong too, instead of returning to the release the first one left
    (every rollback is a record naming what it rolled back from, `rollback_of`).
    Raises ReleaseError when there is none."""
    left = {r["rollback_of"] for r in history if r.get("rollback_of")}
    refused = {r["task_definition"] for r in history if r["release_id"] in left}
    refused.add(latest.get("task_definition"))
    earlier = [
        r
        for r in history
        if r["release_id"] < latest["release_id"] and r["task_definition"] not in refused
    ]
    if not earlier:
        rolled_back = f" (rolled back from: {', '.join(sorted(left))})" if left else ""
        raise ReleaseError(
            f"{env.environment} has no successful release before {latest['release_id']} "
            f"that runs another revision and was not rolled back from{rolled_back}"
        )
    return earlier[-1]


def _still_runnable(
    env: Environment, ecs: Ecs, target: dict[str, Any], latest: dict[str, Any], ecr: Any
) -> None:
    """Raise ReleaseError, saying how to ship that release again, when the release `target`
    (a record) cannot run any more: its revision is not ACTIVE, and ECS cannot point a
    service at it (ECS API reference, DeregisterTaskDefinition), or its image, by digest
    in this environment's repository, is gone (the repository's lifecycle policy expires
    images; a deployment of it would fail to pull until the circuit breaker stops it).
    `ecr` makes the pipeline.registry.Ecr that answers, called only for such an image."""
    task_definition = target["task_definition"]
    state = ecs.revision_status(task_definition)
    if state != "ACTIVE":
        problem = (
            f"{task_definition}, the revision of release {target['release_id']}, is {state}, "
            "and ECS cannot point a service at a revision that is not ACTIVE (ECS API "
            "reference, DeregisterTaskDefinition)"
        )
        raise ReleaseError(f"{problem}: {_ship_again(env, target, latest)}")
    repository, _, digest = str(target.get("image", "")).partition("@")
    if digest and repository == env.ecr_repository_url.rstrip("/"):
        _, name = registries.split_repository_url(repository)
        if not ecr().holds(name, digest):
            raise ReleaseError(
                f"the image of release {target['release_id']}, {target['image']}, is no "
                f"longer in the {name} repository (its lifecycle policy expired it), so "
                f"its tasks could not start: {_ship_again(env, target, latest)}"
            )


def _withdraw_verification(
    env: Environment,
    left: dict[str, Any],
    target: dict[str, Any],
    ecr: Callable[[], Any],
    say: Callable[[str], None],
) -> str:
    """Withdraw the environment's verification of the code and model the rollback leaves:
    remove the verified tag of `left` (its record's `verified_tag`, else its commit's tree
    and its model) from the repository, so an environment promoting from this one refuses
    them until a release here verifies them again (pipeline.promotion). Nothing is removed
    when `target` runs the same code and model. `ecr` makes the pipeline.registry.Ecr that
    removes the tag.

    Returns "" when done (or nothing was to do), else what stays and how to remove it by
    hand: a rollback is what an operator runs when something is wrong, so the tag never
    holds it up; the rollback says so once the service is back."""
    same = ("git_sha", "model_sha256")
    if [left.get(key) for key in same] == [target.get(key) for key in same]:
        return ""
    tag = _verified_tag(left)
    if tag is not None and tag == _verified_tag(target):
        return ""
    _, name = registries.split_repository_url(env.ecr_repository_url)
    if tag is None:
        commit, model = str(left.get("git_sha") or ""), str(left.get("model_sha256") or "")
        if not commit or not model:
            return ""
        return (
            f"the verified tag of commit {commit[:12]} stays in {name}, since this checkout "
            f"does not hold the commit: an environment promoting from {env.environment} may "
            f"still ship it; remove the tag with `git fetch origin {commit} && "
            f"tree=$(git rev-parse --verify {commit}^{{tree}}) && aws ecr batch-delete-image "
            f"--region {env.aws_region} --repository-name {name} --image-ids "
            f"imageTag={promotion.VERIFIED_PREFIX}$tree-{model}`"
        )
    try:
        withdrawn = ecr().withdraw(name, tag)
    except (ClientError, BotoCoreError, registries.ImageError) as exc:
        reason = aws.explain(exc) if isinstance(exc, ClientError | BotoCoreError) else str(exc)
        return (
            f"the verified tag {tag} stays in {name} ({reason}): an environment promoting "
            f"from {env.environment} may still ship what this rollback left; remove the tag "
            f"with `aws ecr batch-delete-image --region {env.aws_region} --repository-name "
            f"{name} --image-ids imageTag={tag}`"
        )
    if withdrawn:
        say(
            f"withdrew {tag}: an environment promoting from {env.environment} refuses this "
            f"code and model until {env.environment} releases them again"
        )
    return ""


def _verified_tag(record: dict[str, Any]) -> str | None:
    """The verified tag of a release record's code and model: the one its release wrote,
    else its commit's tree (in this checkout) and its model; None when neither is known."""
    if record.get("verified_tag"):
        return str(record["verified_tag"])
    commit, model_sha256 = record.get("git_sha"), record.get("model_sha256")
    if not commit or not model_sha256:
        return None
    try:
        return promotion.commit_tag(str(commit), str(model_sha256), REPO)
    except promotion.NotVerified:
        return None


def _ship_again(env: Environment, target: dict[str, Any], latest: dict[str, Any]) -> str:
    """What to do when the release `target` cannot run again as it was: a new commit with
    its code and model, deployed as usual. Its own commit is refused, as older code than
    the environment runs (pipeline.deploy.refuse_older)."""
    old, new = target.get("git_sha"), latest.get("git_sha")
    if not old or not new or old == new:
        return (
            "nothing was changed; deploy a commit with that release's code and model, which "
            "registers a new revision of it"
        )
    return (
        f"nothing was changed; push a commit that reverts {old[:12]}..{new[:12]} "
        f"(git revert --no-edit {old}..{new}) and deploy it as usual (dev first; prod by "
        f"merging dev): it ships that code and model as a new release. {old[:12]} itself "
        f"is refused, as older code than {env.environment} runs"
    )


def rollback(
    env: Environment,
    *,
    ecs: Ecs | None = None,
    ecr: Callable[[], Any] | None = None,
    stable_timeout: float = STABLE_TIMEOUT_SECONDS,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Return `env` to its previous successful release (`_rollback_target`).

    Withdraws the verification of the release it leaves (`_withdraw_verification`), points
    the service back at that release's task definition, waits up to
    `stable_timeout` seconds for the deployment to complete (see `Ecs.wait_for_rollout`),
    gives the scheduled compaction that release's image, and records the rollback as a
    new successful release, which becomes `latest.json` (interrupted once the service was
    pointed back, it records that too, with the reason, and raises KeyboardInterrupt).
    Raises ReleaseError when there is no earlier successful release, when it cannot run
    any more (`_still_runnable`; nothing is changed then), when the deployment does not
    complete, or, once the rollback is recorded, when the verified tag of what it left
    could not be removed (the message says how); RecordError when the records cannot be
    read or written. `ecr` makes the pipeline.registry.Ecr that checks the release's image
    and removes the tag (default: the environment's).
    """
    ecs = ecs or Ecs(env.client("ecs"))
    ecr = ecr or (lambda: registries.Ecr(env.client("ecr")))
    history = [r for r in records.list_records(env.records_url) if r["outcome"] == "succeeded"]
    latest = records.read_latest(env.records_url)
    if latest is None or len(history) < 2:
        raise ReleaseError(
            f"{env.environment} has no earlier successful release to return to "
            f"({len(history)} successful release(s) recorded)"
        )
    target = _rollback_target(env, history, latest)
    task_definition = target["task_definition"]
    _still_runnable(env, ecs, target, latest, ecr)
    with _rollback_recorded_if_interrupted(env, target, latest, say) as rolling:
        rolling.kept = _withdraw_verification(env, latest, target, ecr, say)
        say(
            f"rolling {env.environment} back from {latest['release_id']} to "
            f"{target['release_id']} ({task_definition})"
        )
        with interrupts.deferred():  # an interrupt then knows the service was pointed back
            rolling.deployment = ecs.update(env.cluster_name, env.service_name, task_definition)
        ecs.wait_for_rollout(
            env.cluster_name, env.service_name, rolling.deployment, task_definition, stable_timeout
        )
        with interrupts.deferred():
            compaction = _follow_with_compaction(env, ecs, task_definition, say)
            rolling.record = _rollback_record(target, latest, rolling.deployment, compaction)
        with interrupts.deferred():
            _write_record(env, rolling.record)
            rolling.recorded = True
    if rolling.kept:
        raise ReleaseError(
            f"{env.environment} is back on {target['release_id']} ({task_definition}), but "
            f"{rolling.kept}"
        )
    return rolling.record


@dataclass
class _Rolling:
    """How far a rollback got: what an interrupt must know."""

    kept: str = ""  # the verified tag it could not withdraw, and how to (_withdraw_verification)
    deployment: str = ""  # the deployment its UpdateService started, once it has
    record: dict[str, Any] = field(default_factory=dict)  # once that completed, its record
    recorded: bool = False  # that record is written


@contextmanager
def _rollback_recorded_if_interrupted(
    env: Environment,
    target: dict[str, Any],
    latest: dict[str, Any],
    say: Callable[[str], None],
) -> Iterator[_Rolling]:
    """On KeyboardInterrupt inside, once the service was pointed back at `target`'s
    revision and before the rollback is recorded: record it anyway (as it stood once the
    deployment completed, or saying what was not waited for), say what is left to do, and
    raise the interrupt again. The service is on its way back, and `latest.json` naming
    the release it left would send a later release's rollback to that one."""
    rolling = _Rolling()
    try:
        yield rolling
    except KeyboardInterrupt:
        if not rolling.deployment:
            say(
                f"interrupted before the service was pointed back: {env.environment} still "
                f"runs {latest['release_id']}, whose verified tag may be withdrawn already; "
                f"run nox -s rollback -- {env.environment} again"
            )
        elif not rolling.recorded:
            record = rolling.record or _rollback_record(target, latest, rolling.deployment, "")
            if not rolling.record:
                record["reason"] = (
                    f"interrupted: deployment {rolling.deployment} was not waited for (nox -s "
                    f"status -- {env.environment} shows it) and the scheduled compaction may "
                    "still run the image of the release it left"
                )
            try:
                _write_record(env, record, interrupts.deadline())
            except RecordError as failure:
                say(f"the rollback's record could not be written: {failure}")
        if rolling.kept:
            say(rolling.kept)
        raise


def _rollback_record(
    target: dict[str, Any], latest: dict[str, Any], deployment: str, compaction: str
) -> dict[str, Any]:
    """The record of a completed rollback from `latest` to `target`: a new successful
    release of `target`'s revision, image and model, naming both."""
    now = datetime.now(UTC)
    return {
        **{
            k: v
            for k, v in target.items()
            if k not in ("reason", "started_at", "finished_at", "deployment_id")
        },
        "release_id": release_id(target.get("git_sha", "rollback"), now),
        "outcome": "succeeded",
        "rollback_of": latest["release_id"],
        "restores": target["release_id"],
        "deployment_id": deployment,
        "compaction_task_definition": compaction,
        "previous_task_definition": latest.get("task_definition"),
        "started_at": now.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
    }


def status(env: Environment, *, ecs: Ecs | None = None) -> dict[str, Any]:
    """What runs in `env`, read from what runs: the service's revision, its tasks and its
    rollout (DescribeServices); the image, model and commit of that revision's container
    (DescribeTaskDefinition), not of the latest release record, which a failed release or
    a change made by hand leaves describing something else (`in_sync` False; the gate's
    accuracy is then not shown); the endpoint's `/v2/health/ready` (Open Inference
    Protocol) and what its model route serves.

    Raises ReleaseError when the ECS service is not active or its revision has no such
    container, RecordError when `latest.json` cannot be read.
    """
    ecs = ecs or Ecs(env.client("ecs"))
    service = ecs.service(env.cluster_name, env.service_name)
    running = service["taskDefinition"]
    container = ecs.container(running, env.container_name)
    variables = {v["name"]: v["value"] for v in container.get("environment", [])}
    latest = records.read_latest(env.records_url) or {}
    in_sync = latest.get("task_definition") == running
    base = env.endpoint_url.rstrip("/")
    try:
        health, _ = _get_json(f"{base}/v2/health/ready")
    except OSError as exc:
        health = f"unreachable ({exc.__class__.__name__})"
    model = variables.get("MODEL_NAME") or None
    return {
        "environment": env.environment,
        "task_definition": running,
        "tasks": f"{service.get('runningCount')}/{service.get('desiredCount')}",
        "rollout": _rollout(service),
        "release": latest.get("release_id"),
        "image": container.get("image"),
        "model": model,
        "model_sha256": variables.get("MODEL_SHA256") or None,
        "gate_accuracy": (latest.get("gate") or {}).get("accuracy") if in_sync else None,
        "git_sha": variables.get("GIT_SHA") or None,
        "in_sync": in_sync,
        "health": "ready" if health == 200 else f"not ready ({health})",
        "serving": _served_model(base, model, env.api_token()),
    }


def _rollout(service: dict[str, Any]) -> str | None:
    """The PRIMARY deployment's rollout state, with ECS's reason when it FAILED (ECS API
    reference, Deployment: rolloutState, rolloutStateReason); None when ECS lists none."""
    for deployment in service.get("deployments", []):
        if deployment.get("status") == "PRIMARY":
            state = deployment.get("rolloutState")
            reason = deployment.get("rolloutStateReason")
            return f"{state} ({reason})" if state == "FAILED" and reason else state
    return None


def _served_model(base: str, model_name: str | None, token: str | None) -> str:
    """What the model route says it serves, asked as a client with the token would."""
    if not model_name:
        return "no release yet"
    try:
        code, metadata = _get_json(f"{base}/v2/models/{model_name}", token)
    except OSError as exc:
        return f"unreachable ({exc.__class__.__name__})"
    if code == 401:
        return "refused: HTTP 401 (the token in api_token_secret_arn is not accepted)"
    if code != 200:
        return f"HTTP {code}"
    sha256 = (metadata or {}).get("parameters", {}).get("sha256")
    return f"{model_name} sha256 {sha256}" + (" (token accepted)" if token else "")


def format_status(report: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    keys = keys or list(report)
    width = max(len(k) for k in keys)
    return "\n".join(f"{k:<{width}}  {report[k]}" for k in keys)
