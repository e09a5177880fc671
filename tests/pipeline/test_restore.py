"""A failed first release's way back after a Terraform apply deregistered the revision the
service ran, against moto's ECS.

ECS refuses to point a service at a revision that is not ACTIVE ("you can't update an
existing service to reference an INACTIVE task definition": ECS API reference,
DeregisterTaskDefinition), answering `ClientException: TaskDefinition is inactive`.
moto's UpdateService accepts it, so the client here refuses as ECS does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from pipeline import records, revisions
from pipeline.release import Ecs, release
from tests.pipeline.environments import CLUSTER, SERVICE, make_environment
from tests.pipeline.test_release import candidate

pytestmark = pytest.mark.integration


def refusing_inactive_revisions(client: Any) -> Any:
    """`client` (a boto3 ECS client) with UpdateService refusing a revision that is not
    ACTIVE, with ECS's error."""

    def refuse(params: dict[str, Any], **_: Any) -> None:
        revision = params.get("taskDefinition")
        if not revision:
            return
        described = client.describe_task_definition(taskDefinition=revision)["taskDefinition"]
        if described.get("status", "ACTIVE") != "ACTIVE":
            raise ClientError(
                {
                    "Error": {"Code": "ClientException", "Message": "TaskDefinition is inactive"},
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                },
                "UpdateService",
            )

    client.meta.events.register("before-parameter-build.ecs.UpdateService", refuse)
    return client


def test_a_failed_first_release_returns_to_terraforms_revision_when_its_own_was_deregistered(
    aws, smoke
):
    env = make_environment("http://127.0.0.1:9")  # nothing answers: the smoke test fails
    ecs = refusing_inactive_revisions(boto3.client("ecs"))
    ran = env.task_definition_arn
    # A terraform apply that changes the task registers a revision and deregisters the old.
    base = ecs.describe_task_definition(taskDefinition=ran)["taskDefinition"]
    applied = ecs.register_task_definition(
        **{**revisions.kept_fields(base), "memory": "2048"},
        containerDefinitions=base["containerDefinitions"],
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.deregister_task_definition(taskDefinition=ran)
    with pytest.raises(ClientError, match="TaskDefinition is inactive"):
        ecs.update_service(cluster=CLUSTER, service=SERVICE, taskDefinition=ran)
    env = replace(env, task_definition_arn=applied)

    said: list[str] = []
    outcome = release(
        env,
        candidate(),
        smoke,
        ecs=Ecs(ecs, poll_seconds=0.05),
        say=said.append,
        sleep=lambda seconds: None,
        stable_timeout=10,
        smoke_timeout=0.5,
    )
    assert outcome.record["outcome"] == "rolled_back", outcome.reason
    assert "did not become ready" in outcome.reason
    assert f"{ran} is INACTIVE; rolling back to Terraform's revision {applied} instead" in said
    running = ecs.describe_services(cluster=CLUSTER, services=[SERVICE])["services"][0]
    assert running["taskDefinition"] == applied
    assert records.read_latest(env.records_url) is None
