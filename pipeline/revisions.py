"""What a new ECS task-definition revision keeps of the revision it is made from.

DescribeTaskDefinition answers more than RegisterTaskDefinition takes (the ARN, revision,
status, registration times, ...): a new revision is registered from the request fields
below only (ECS API reference, RegisterTaskDefinition), the ones the base revision sets.
"""

from __future__ import annotations

from typing import Any

# RegisterTaskDefinition's request fields a release carries over (its containers apart).
REQUEST_FIELDS = (
    "family",
    "taskRoleArn",
    "executionRoleArn",
    "networkMode",
    "volumes",
    "placementConstraints",
    "requiresCompatibilities",
    "cpu",
    "memory",
    "runtimePlatform",
    "ephemeralStorage",
)


def described(client: Any, task_definition: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """DescribeTaskDefinition of `task_definition` with its tags: (`taskDefinition`, `tags`).

    Tags come only when asked for: "If this field is omitted, tags aren't included in the
    response" (ECS API reference, DescribeTaskDefinition, `include`). botocore's errors
    pass through.
    """
    answer = client.describe_task_definition(taskDefinition=task_definition, include=["TAGS"])
    return answer["taskDefinition"], list(answer.get("tags") or [])


def kept_fields(
    base: dict[str, Any],
    fields: tuple[str, ...] = REQUEST_FIELDS,
    *,
    tags: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The `fields` of `base` (a DescribeTaskDefinition `taskDefinition`) that it sets, and
    `tags` (`described`'s) when there are any: absent, null and empty values are left out,
    as RegisterTaskDefinition would refuse or ignore them. A request with tags is also
    authorised as ecs:TagResource (ECS developer guide, "Grant permission to tag resources
    on creation"; the deploy role's TagRevisionsOnRegister statement)."""
    kept = {k: base[k] for k in fields if base.get(k) not in (None, [], {})}
    if tags:
        kept["tags"] = tags
    return kept
