"""What a plan does to a live environment: which resources it replaces, and how.

`terraform plan` decides "must be replaced" from the provider's schema (ForceNew
arguments), locally, so a plan against the moto-applied environments names the same
replacements real AWS would see. What moto does not show is what a replacement costs
there (README.md, "Changing a live environment"):

- a replaced bucket, repository, log group, secret, role, load balancer, cluster or
  service loses what it holds, or changes the name or endpoint something else calls;
- a subnet, security group or target group that is deleted before its successor
  exists is still in use (network interfaces, a listener), and AWS refuses
  (DependencyViolation, ResourceInUse) while nothing moves its users off it: it must
  be replaced create-before-destroy, the successor under a name and range of its own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# Resources whose replacement loses data or changes what others call.
HOLDS_DATA_OR_IS_CALLED = frozenset(
    {
        "aws_athena_workgroup",
        "aws_cloudwatch_log_group",
        "aws_ecr_repository",
        "aws_ecs_cluster",
        "aws_ecs_service",
        "aws_glue_catalog_database",
        "aws_glue_catalog_table",
        "aws_iam_role",
        "aws_lb",
        "aws_lb_listener",
        "aws_s3_bucket",
        "aws_secretsmanager_secret",
        "aws_vpc",
    }
)
# Resources that are in use while they are replaced: only create-before-destroy works.
IN_USE_WHILE_REPLACED = frozenset({"aws_lb_target_group", "aws_security_group", "aws_subnet"})

CREATE_BEFORE_DESTROY = ["create", "delete"]


@dataclass(frozen=True)
class Replacement:
    address: str
    type: str
    actions: list[str]
    before: Mapping[str, Any]
    after: Mapping[str, Any]

    @property
    def create_before_destroy(self) -> bool:
        return self.actions == CREATE_BEFORE_DESTROY


def replacements(plan: Mapping[str, Any]) -> Iterator[Replacement]:
    """Every resource `plan` (`terraform show -json`) deletes, with or without a successor."""
    for change in plan.get("resource_changes", []):
        actions = change["change"]["actions"]
        if "delete" in actions:
            yield Replacement(
                change["address"],
                change["type"],
                actions,
                change["change"]["before"] or {},
                change["change"]["after"] or {},
            )


def unsafe_replacements(plan: Mapping[str, Any]) -> list[str]:
    """The deletions in `plan` that lose data or fail on real AWS, one line each."""
    found = []
    for replaced in replacements(plan):
        if replaced.type in HOLDS_DATA_OR_IS_CALLED:
            found.append(f"{replaced.address}: {replaced.actions} (holds data or is called)")
        elif replaced.type in IN_USE_WHILE_REPLACED and not replaced.create_before_destroy:
            found.append(f"{replaced.address}: {replaced.actions} (deleted while in use)")
    return found


def subnet_range_conflicts(plan: Mapping[str, Any]) -> list[str]:
    """New subnets whose range overlaps a subnet that exists when they are created.

    A create-before-destroy subnet is created while every subnet of the state still
    exists; EC2 refuses a range that overlaps one of them (InvalidSubnet.Conflict).
    """
    existing = {
        change["address"]: ipaddress.ip_network(change["change"]["before"]["cidr_block"])
        for change in plan.get("resource_changes", [])
        if change["type"] == "aws_subnet" and change["change"]["before"]
    }
    conflicts = []
    for replaced in replacements(plan):
        if replaced.type != "aws_subnet" or not replaced.after:
            continue
        new = ipaddress.ip_network(replaced.after["cidr_block"])
        conflicts += [
            f"{replaced.address} {new} overlaps {address} {old}"
            for address, old in existing.items()
            if new.overlaps(old)
        ]
    return conflicts
