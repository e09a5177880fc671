"""pipeline.aws_calls: the one list of AWS calls is the README's role table."""

from __future__ import annotations

from pipeline import aws_calls
from tests.conftest import REPO


def test_the_readme_role_table_is_the_list() -> None:
    assert aws_calls.markdown_table() in (REPO / "README.md").read_text()


def test_every_role_has_calls_and_every_call_a_resource_pattern() -> None:
    for role in aws_calls.Role:
        assert aws_calls.calls(role), f"{role} makes no call"
    for call in aws_calls.CALLS:
        assert call.resource == "*" or call.resource.startswith(("arn:aws:", "{"))
        assert call.action.split(":")[0] in (
            "s3",
            "ecr",
            "ecs",
            "iam",
            "logs",
            "secretsmanager",
            "cloudwatch",
        )
