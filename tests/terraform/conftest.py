"""Terraform test fixtures: throwaway copies of the roots, pointed at the moto server.

Nothing here writes into the repository: every `terraform init` runs in a copy of
`terraform/` under pytest's tmp directory. The binary and the provider mirror
(`terraform_bin`, `terraform_cli_config`) live in tests/conftest.py, which the image
tests share. Tools that are missing skip the test locally and fail it in CI (`CI=true`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipeline import terraform
from tests.conftest import require_tool

HERE = Path(__file__).resolve().parent
MOTO_OVERRIDE_TEMPLATE = HERE / "moto_override.tf.tmpl"

# What the moto-based applies change, and only them: moto's Application Auto
# Scaling lacks ListTagsForResource, and nothing in moto runs a load balancer
# that would need deletion protection or keeps the bucket's objects worth saving.
MOTO_TFVARS = """\
enable_autoscaling  = false
deletion_protection = false
force_destroy       = true
"""


@pytest.fixture(scope="session")
def checkov_bin() -> str:
    """CHECKOV (checkov lives in its own virtualenv, its pins clash with ours) or PATH."""
    return require_tool(
        "checkov is not installed: install it in its own virtualenv "
        "(`uv tool install checkov`) or set CHECKOV to its path",
        os.environ.get("CHECKOV") or shutil.which("checkov"),
    )


@pytest.fixture(scope="session", autouse=True)
def _terraform_cli_config(terraform_cli_config: Path | None) -> Path | None:
    """Every test here runs Terraform with the shared CLI configuration."""
    return terraform_cli_config


def copy_terraform(destination: Path) -> Path:
    """Copy terraform/ to `destination` without working directories, state or plans."""
    shutil.copytree(
        terraform.TERRAFORM_DIR,
        destination,
        ignore=shutil.ignore_patterns(".terraform", "*.tfstate", "*.tfstate.*", "tfplan"),
    )
    return destination


def point_at_moto(root: Path, endpoint: str) -> None:
    """Add the test-only override: moto endpoints, skip flags, local backend."""
    override = MOTO_OVERRIDE_TEMPLATE.read_text().replace("${endpoint}", endpoint)
    (root / "moto_override.tf").write_text(override)


def apply_dev_to_moto(work: Path, endpoint: str, extra_tfvars: str = "") -> dict[str, Any]:
    """Copy terraform/ to `work`, apply bootstrap's OIDC provider and the dev root against
    the moto server at `endpoint` (MOTO_TFVARS plus `extra_tfvars`); dev's outputs.

    The bucket policy denies requests without TLS, and moto enforces it; the moto server
    speaks plain HTTP on loopback, so the policy is lifted for the data-plane calls.
    """
    copy_terraform(work)
    var_file = work / "moto.tfvars"
    var_file.write_text(MOTO_TFVARS + extra_tfvars)
    for root in (work / "bootstrap", work / "envs" / "dev"):
        point_at_moto(root, endpoint)
        terraform.init(root)
    terraform.apply(
        work / "bootstrap", extra_args=["-target=aws_iam_openid_connect_provider.github"]
    )
    terraform.apply("dev", terraform_dir=work, var_files=[var_file])
    outputs = dict(terraform.outputs("dev", terraform_dir=work))
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).delete_bucket_policy(Bucket=outputs["bucket_name"])
    return outputs


@pytest.fixture
def terraform_copy(tmp_path: Path) -> Path:
    """A private copy of terraform/ for one test."""
    return copy_terraform(tmp_path / "terraform")
