"""A small IAM evaluator for identity policies: enough to prove who may write where.

moto does not implement `iam:SimulatePrincipalPolicy`, so the tests decide access
from the policy documents themselves. The evaluation errs towards "allowed":
conditions are ignored and NotAction/NotResource match everything they do not
exclude, so a "cannot" verdict holds whatever the conditions say.
"""

from __future__ import annotations

import fnmatch
import json
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

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


def _matches(patterns: Iterable[str], value: str, *, case_sensitive: bool) -> bool:
    if case_sensitive:
        return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)
    return any(fnmatch.fnmatchcase(value.lower(), pattern.lower()) for pattern in patterns)


def applies(statement: Statement, action: str, resource: str) -> bool:
    """Whether `statement` covers `action` on `resource` (conditions ignored)."""
    if "Action" in statement:
        action_ok = _matches(_as_list(statement["Action"]), action, case_sensitive=False)
    else:
        action_ok = not _matches(_as_list(statement.get("NotAction")), action, case_sensitive=False)
    if "Resource" in statement:
        resource_ok = _matches(_as_list(statement["Resource"]), resource, case_sensitive=True)
    else:
        resource_ok = not _matches(
            _as_list(statement.get("NotResource")), resource, case_sensitive=True
        )
    return action_ok and resource_ok


def allowed(documents: Iterable[str | dict[str, Any]], action: str, resource: str) -> bool:
    """Whether the identity policies allow `action` on `resource` (explicit deny wins)."""
    verdict = False
    for document in documents:
        for statement in statements(document):
            if not applies(statement, action, resource):
                continue
            if statement.get("Effect") == "Deny":
                return False
            verdict = verdict or statement.get("Effect") == "Allow"
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
