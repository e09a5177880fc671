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


def kept_fields(base: dict[str, Any], fields: tuple[str, ...] = REQUEST_FIELDS) -> dict[str, Any]:
    """The `fields` of `base` (a DescribeTaskDefinition `taskDefinition`) that it sets:
    absent, null and empty values are left out, as RegisterTaskDefinition would refuse or
    ignore them."""
    return {k: base[k] for k in fields if base.get(k) not in (None, [], {})}
