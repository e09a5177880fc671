"""The scheduled compaction's task definition, registered from a released revision (moto's
ECS in this process: no server, no socket)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from pipeline import compaction_task

EXECUTION_ROLE = "arn:aws:iam::123456789012:role/onnx-ship-dev-execution"
TASK_ROLE = "arn:aws:iam::123456789012:role/onnx-ship-dev-task"
COMPACTION_ROLE = "arn:aws:iam::123456789012:role/onnx-ship-dev-compaction"
SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:onnx-ship-dev/api-tokens"
COMMAND = compaction_task.command("dev", "s3://bucket/capture")


@pytest.fixture
def ecs(monkeypatch) -> Iterator[Any]:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_ENDPOINT_URL_ECS"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        yield boto3.client("ecs", region_name="us-east-1")


def released(ecs: Any) -> str:
    """A service revision as a release registers it: the server and a sidecar."""
    server = {
        "name": "server",
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/onnx-ship-dev@sha256:" + "a" * 64,
        "essential": True,
        "environment": [{"name": "APP_ENV", "value": "dev"}],
        "secrets": [{"name": "API_TOKENS", "valueFrom": SECRET}],
        "portMappings": [{"containerPort": 8080, "protocol": "tcp"}],
        "healthCheck": {
            "command": [
                "CMD-SHELL",
                'python -c "import urllib.request; urllib.request.'
                "urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2)\"",
            ]
        },
        "mountPoints": [{"sourceVolume": "state", "containerPath": "/var/lib/onnx-ship"}],
        "readonlyRootFilesystem": True,
    }
    sidecar = {
        "name": "log-router",
        "image": "public.ecr.aws/aws-observability/aws-for-fluent-bit:stable",
        "essential": False,
        "portMappings": [{"containerPort": 2020, "protocol": "tcp"}],
    }
    answer = ecs.register_task_definition(
        family="onnx-ship-dev",
        taskRoleArn=TASK_ROLE,
        executionRoleArn=EXECUTION_ROLE,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="512",
        memory="1024",
        volumes=[{"name": "state"}],
        containerDefinitions=[server, sidecar],
    )
    return answer["taskDefinition"]["taskDefinitionArn"]


def test_the_command_compacts_the_environments_last_two_days_under_its_capture_url():
    assert compaction_task.command("dev", "s3://bucket/capture") == [
        "python",
        "-m",
        "pipeline.predictions.compact",
        "dev",
        "--url",
        "s3://bucket/capture",
        "--since",
        "2d",
    ]


def test_the_revision_is_the_released_one_with_the_command_the_role_and_nothing_it_serves(ecs):
    base = released(ecs)
    arn = compaction_task.register(
        ecs,
        base,
        compaction_family="onnx-ship-dev-compaction",
        container="server",
        command=COMMAND,
        task_role_arn=COMPACTION_ROLE,
    )
    revision = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
    assert arn.endswith(":task-definition/onnx-ship-dev-compaction:1")
    assert revision["family"] == "onnx-ship-dev-compaction"
    assert revision["taskRoleArn"] == COMPACTION_ROLE
    assert revision["executionRoleArn"] == EXECUTION_ROLE
    assert (revision["networkMode"], revision["cpu"], revision["memory"]) == (
        "awsvpc",
        "512",
        "1024",
    )
    assert revision["requiresCompatibilities"] == ["FARGATE"]
    assert revision["volumes"] == [{"name": "state"}]

    server, sidecar = revision["containerDefinitions"]
    assert server["command"] == COMMAND
    assert server["image"].endswith("@sha256:" + "a" * 64)
    assert server["environment"] == [{"name": "APP_ENV", "value": "dev"}]
    assert server["mountPoints"] == [
        {"sourceVolume": "state", "containerPath": "/var/lib/onnx-ship"}
    ]
    assert server["readonlyRootFilesystem"] is True
    for dropped in ("secrets", "portMappings", "healthCheck"):
        assert not server.get(dropped), dropped
        assert not sidecar.get(dropped), dropped
    assert sidecar["name"] == "log-router" and not sidecar.get("command")

    # The released revision itself is untouched.
    kept = ecs.describe_task_definition(taskDefinition=base)["taskDefinition"]
    assert kept["containerDefinitions"][0]["secrets"][0]["valueFrom"] == SECRET
    assert kept["taskRoleArn"] == TASK_ROLE


def test_a_released_revision_without_the_container_is_refused_by_name(ecs):
    base = released(ecs)
    with pytest.raises(KeyError, match="has no container 'api'") as refused:
        compaction_task.register(
            ecs,
            base,
            compaction_family="onnx-ship-dev-compaction",
            container="api",
            command=COMMAND,
            task_role_arn=COMPACTION_ROLE,
        )
    assert base in str(refused.value)
    families = ecs.list_task_definition_families(familyPrefix="onnx-ship-dev-compaction")
    assert families["families"] == []
