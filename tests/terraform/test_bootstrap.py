"""The one-time bootstrap in an account that already has GitHub's OIDC provider.

An account holds one OpenID Connect provider per URL: CreateOpenIDConnectProvider answers
EntityAlreadyExists for a second (IAM API reference), so an account where GitHub Actions
already assume roles needs the bootstrap to look its provider up instead of creating one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipeline import terraform
from tests.terraform.conftest import copy_terraform, point_at_moto

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

GITHUB = "https://token.actions.githubusercontent.com"
THUMBPRINT = "6938fd4d98bab03faadb97b34396831e3780aea1"
LOOK_UP = {"create_github_oidc_provider": "false"}


@pytest.fixture
def bootstrap(moto_server: Any, terraform_bin: str, tmp_path: Path) -> Iterator[Path]:
    moto_server.reset()
    root = copy_terraform(tmp_path / "terraform") / "bootstrap"
    point_at_moto(root, moto_server.endpoint)
    terraform.init(root)
    yield root
    moto_server.reset()


def iam(moto_server: Any) -> Any:
    return boto3.client(
        "iam",
        endpoint_url=moto_server.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def existing_provider(moto_server: Any, audiences: list[str]) -> str:
    """The account's GitHub provider, made outside Terraform (another project's)."""
    return iam(moto_server).create_open_id_connect_provider(
        Url=GITHUB, ClientIDList=audiences, ThumbprintList=[THUMBPRINT]
    )["OpenIDConnectProviderArn"]


def test_an_account_with_the_provider_is_bootstrapped_by_looking_it_up(
    moto_server: Any, bootstrap: Path
) -> None:
    arn = existing_provider(moto_server, ["sts.amazonaws.com", "another-audience"])
    with pytest.raises(terraform.TerraformError, match="EntityAlreadyExists"):
        terraform.apply(bootstrap)  # what the default does in such an account
    terraform.apply(bootstrap, variables=LOOK_UP)
    assert terraform.outputs(bootstrap)["github_oidc_provider_arn"] == arn
    kept = iam(moto_server).get_open_id_connect_provider(OpenIDConnectProviderArn=arn)
    assert sorted(kept["ClientIDList"]) == ["another-audience", "sts.amazonaws.com"]


def test_an_existing_provider_without_the_workflows_audience_is_refused_saying_how_to_add_it(
    moto_server: Any, bootstrap: Path
) -> None:
    existing_provider(moto_server, ["another-audience"])
    with pytest.raises(terraform.TerraformError) as raised:
        terraform.apply(bootstrap, variables=LOOK_UP)
    message = " ".join(str(raised.value).split())
    assert "does not admit the audience sts.amazonaws.com" in message, message
    assert "add-client-id-to-open-id-connect-provider" in message, message
