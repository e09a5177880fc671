"""Decide from the policies Terraform rendered whether a role may make a call.

Action and resource matching is moto's own (`moto.iam.access_control.IAMPolicyStatement`,
the evaluator behind its IAM enforcement). moto leaves the rest out, as read in that
module and measured against its server:

- it knows no ARN for ECS, ECR, CloudWatch Logs or Secrets Manager requests and
  authorises them against the resource `*`, so a statement scoped to a service,
  repository or secret never matches;
- it evaluates only `StringEquals` conditions, and only on keys the request supplies
  (in practice `sts:ExternalId`): `s3:prefix`, `iam:PassedToService` and every other
  operator count as met, and an Allow whose StringEquals fails counts as a Deny;
- it does not check `iam:PassRole` at all (RegisterTaskDefinition with a taskRoleArn
  passes without it), nor a web identity's token or its trust conditions: its STS
  `AssumeRoleWithWebIdentity` (moto/sts/models.py, 5.2) is `assume_role` under another
  name, reading neither the WebIdentityToken nor the role's trust policy, so any string
  claiming any branch gets the role's credentials;
- a batch delete (DeleteObjects, one request for many keys) is authorised as
  s3:DeleteObject on the bucket's ARN, where S3 checks each key's (S3 API reference,
  DeleteObjects; moto/s3/responses.py `_bucket_response_post`, 5.2): a role granted the
  delete on a prefix only is refused every key;
- bucket policies: only for object requests, conditions counted as met (the bucket's
  TLS-only Deny refuses every object request, whatever the transport), never combined
  with the caller's identity policies.

So conditions are evaluated here, for the operators the project's policies use, from
the condition keys each call carries (pipeline/aws_calls.py `context`, or a token's
claims for a trust policy): a key the request does not carry fails its condition (IAM
policy reference, "Condition operators"), an operator not known here fails an Allow and
holds for a Deny, so a verdict of "allowed" never rests on a condition this module
cannot read. Several keys under one operator, and several operators, must all hold;
several values of one key are alternatives.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from moto.iam.access_control import IAMPolicyStatement, PermissionResult

Statement = dict[str, Any]


def statements(document: str | dict[str, Any]) -> Iterator[Statement]:
    """The statements of a policy document (JSON text, URL-encoded or not, or parsed)."""
    if isinstance(document, str):
        text = document if document.lstrip().startswith("{") else urllib.parse.unquote(document)
        document = json.loads(text)
    found = document.get("Statement", [])
    yield from [found] if isinstance(found, dict) else found


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _string_equals(expected: list[str], actual: str) -> bool:
    return actual in expected


def _like(pattern: str, actual: str) -> bool:
    """IAM's wildcard match: `*` any run of characters (none too), `?` exactly one,
    everything else literal and case-sensitive (no character classes)."""
    regex = "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )
    return re.fullmatch(regex, actual, flags=re.S) is not None


def _string_like(expected: list[str], actual: str) -> bool:
    return any(_like(pattern, actual) for pattern in expected)


def _arn_like(expected: list[str], actual: str) -> bool:
    """ArnLike: each of the six colon-separated parts matched on its own, with wildcards
    (IAM policy reference, "Amazon Resource Name (ARN) condition operators")."""
    parts = actual.split(":", 5)
    return len(parts) == 6 and any(
        len(wanted := pattern.split(":", 5)) == 6
        and all(_like(w, a) for w, a in zip(wanted, parts, strict=True))
        for pattern in expected
    )


OPERATORS = {
    "StringEquals": _string_equals,
    "StringLike": _string_like,
    "ArnEquals": _string_equals,
    "ArnLike": _arn_like,
}


def conditions_hold(statement: Statement, context: Mapping[str, str]) -> bool:
    """Whether every condition of `statement` holds for a request carrying `context`."""
    allow = statement.get("Effect") == "Allow"
    for operator, tests in (statement.get("Condition") or {}).items():
        check = OPERATORS.get(operator)
        for key, expected in tests.items():
            if check is None:
                if allow:
                    return False
                continue
            if key not in context or not check(_as_list(expected), context[key]):
                return False
    return True


def _matches(statement: Statement, action: str, resource: str) -> bool:
    """moto's action and resource matching, conditions aside."""
    bare = {k: v for k, v in statement.items() if k != "Condition"}
    return IAMPolicyStatement(bare).is_action_permitted(action, resource) in (
        PermissionResult.PERMITTED,
        PermissionResult.DENIED,
    )


def allowed(
    documents: Iterable[str | dict[str, Any]],
    action: str,
    resource: str,
    context: Mapping[str, str] | None = None,
) -> bool:
    """Whether the identity policies allow `action` on `resource` (explicit deny wins)."""
    matching = (
        statement
        for document in documents
        for statement in statements(document)
        if _matches(statement, action, resource)
    )
    return _verdict(matching, context or {})


def _verdict(matching: Iterable[Statement], context: Mapping[str, str]) -> bool:
    """IAM's evaluation over the statements that name the request: allowed when one
    whose conditions hold allows it and none whose conditions hold denies it."""
    verdict = False
    for statement in matching:
        if not conditions_hold(statement, context):
            continue
        if statement.get("Effect") == "Deny":
            return False
        verdict = True
    return verdict


def wildcard_statements(documents: Iterable[str | dict[str, Any]]) -> list[Statement]:
    """Allow statements granting every action (`*`) on every resource (`*`)."""
    found = []
    for document in documents:
        for statement in statements(document):
            if statement.get("Effect") != "Allow":
                continue
            every_action = "*" in _as_list(statement.get("Action")) or "NotAction" in statement
            if every_action and "*" in _as_list(statement.get("Resource")):
                found.append(statement)
    return found


def granted_actions(documents: Iterable[str | dict[str, Any]]) -> set[str]:
    """Every action an Allow statement names."""
    return {
        action
        for document in documents
        for statement in statements(document)
        if statement.get("Effect") == "Allow"
        for action in _as_list(statement.get("Action"))
    }


def trust_allows(
    document: str | dict[str, Any],
    principal: tuple[str, str],
    action: str,
    context: Mapping[str, str],
) -> bool:
    """Whether a role's trust policy lets `principal` (type, e.g. ("Federated", <provider
    ARN>) or ("Service", "vpc-flow-logs.amazonaws.com")) take `action` on a request
    carrying `context` (a web identity token's claims as condition keys, the calling
    service's aws:SourceAccount/aws:SourceArn). An explicit Deny wins."""
    kind, name = principal
    matching = (
        statement
        for statement in statements(document)
        if name in _as_list((statement.get("Principal") or {}).get(kind))
        and action in _as_list(statement.get("Action"))
    )
    return _verdict(matching, context)
