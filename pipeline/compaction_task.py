"""The scheduled compaction task: the image of the last successful release, its own command.

EventBridge Scheduler (terraform/modules/capture_catalog) runs the task family
`<service family>-compaction` without a revision, so ECS starts its latest ACTIVE
revision (ECS API reference, RunTask, `taskDefinition`: "If a revision isn't specified,
the latest ACTIVE revision is used"). Terraform never registers a revision of that
family; only a release does, once its deployment COMPLETED and the smoke test passed
(and `rollback`, once the service is back). So the schedule runs the image of the
last successful release:

- a release that fails and rolls back registers nothing: the family's latest revision
  is still the last good release's;
- a `terraform apply` that changes the service's task definition registers a revision
  of the service family (the placeholder image), not of this one.

The revision is the released service revision with the compaction command, the
compaction role and no secrets (the task needs no API token). The command is in the
revision, not in the schedule's input: the EventBridge Scheduler documentation
(API reference, `Target.Input`) does not say that an ECS target's input becomes
RunTask's `overrides`, so nothing depends on it.
"""

from __future__ import annotations

from typing import Any

from pipeline import revisions

# What `python -m pipeline.predictions.compact` is asked each hour: every hour of the
# last two days that is finished and not yet compacted (a missed run is caught up).
SINCE = "2d"
# The revision keeps the released one's settings but its family and task role.
KEPT_FIELDS = tuple(f for f in revisions.REQUEST_FIELDS if f not in ("family", "taskRoleArn"))
# What a task that serves nothing does not need: the API tokens and the listening port.
DROPPED_CONTAINER_FIELDS = ("secrets", "portMappings", "healthCheck")


def command(environment: str, capture_url: str) -> list[str]:
    """The container command: compact `environment`'s finished hours under `capture_url`
    (`s3://bucket/capture`, the environment's `capture_url` output)."""
    return [
        "python",
        "-m",
        "pipeline.predictions.compact",
        environment,
        "--url",
        capture_url,
        "--since",
        SINCE,
    ]


def register(
    client: Any,
    released: str,
    *,
    compaction_family: str,
    container: str,
    command: list[str],
    task_role_arn: str,
) -> str:
    """Register the compaction family's next revision from the released service revision
    `released` (an ARN); its ARN.

    `client` is a boto3 ECS client. The revision is `released` with `container`'s command
    set to `command`, `task_role_arn` as its task role and the fields in
    DROPPED_CONTAINER_FIELDS removed. Raises KeyError naming the container when `released`
    has none of that name; botocore's errors pass through (ECS API reference,
    DescribeTaskDefinition and RegisterTaskDefinition).
    """
    base, tags = revisions.described(client, released)
    containers = []
    for definition in base["containerDefinitions"]:
        definition = {k: v for k, v in definition.items() if k not in DROPPED_CONTAINER_FIELDS}
        if definition["name"] == container:
            definition["command"] = list(command)
        containers.append(definition)
    if not any(c["name"] == container for c in containers):
        raise KeyError(f"task definition {released} has no container {container!r}")
    request = revisions.kept_fields(base, KEPT_FIELDS, tags=tags)
    registered = client.register_task_definition(
        **request,
        family=compaction_family,
        taskRoleArn=task_role_arn,
        containerDefinitions=containers,
    )
    return registered["taskDefinition"]["taskDefinitionArn"]
