"""Terraform test fixtures: throwaway copies of the roots, pointed at the moto server.

Nothing here writes into the repository: every `terraform init` runs in a copy of
`terraform/` under pytest's tmp directory. The binary and the provider mirror
(`terraform_bin`, `terraform_cli_config`) live in tests/conftest.py, which the image
tests share. Tools that are missing skip the test locally and fail it in CI (`CI=true`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest

from pipeline import terraform
from tests.conftest import REPO, require_tool

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
MOTO_OVERRIDE_TEMPLATE = HERE / "moto_override.tf.tmpl"

# What the moto-based applies change, and only them: moto's Application Auto
# Scaling lacks ListTagsForResource, which the provider reads after creating a scalable
# target (the autoscaling resources are planned against the applied environments
# instead), and nothing in moto keeps the bucket's objects worth saving. Deletion
# protection stays as each environment's tfvars set it.
MOTO_TFVARS = """\
enable_autoscaling = false
force_destroy      = true
"""
# What a user sets for their own account in an environment's terraform.tfvars (README,
# "First deploy on a fresh AWS account", step 2; TLS), pinned in every copy the tests
# apply so they test the committed configuration in moto's account whatever a user set:
# a *.auto.tfvars overrides terraform.tfvars, and this one sorts before the ones a test
# adds (tls.auto.tfvars, oidc.auto.tfvars), which override it in turn (Terraform docs,
# "Variable definition precedence").
TEST_REPOSITORY = "example-org/onnx-ship"
TEST_REGION = "us-east-1"
ACCOUNT_PINS_FILE = "00-account-pins.auto.tfvars"
ACCOUNT_PINS = f"""\
github_repository                  = "{TEST_REPOSITORY}"
aws_region                         = "{TEST_REGION}"
availability_zones                 = ["{TEST_REGION}a", "{TEST_REGION}b"]
certificate_arn                    = ""
domain_name                        = ""
route53_zone_id                    = ""
metrics_scraper_security_group_ids = []
"""
# The bootstrap's state bucket in moto's account: what TF_STATE_BUCKET holds when the
# environments are applied (nox -s apply passes it as state_bucket_name).
MOTO_STATE_BUCKET = "onnx-ship-tfstate-123456789012-us-east-1"


@pytest.fixture(scope="session")
def checkov_command(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """checkov, which needs its own virtualenv (its pins clash with ours).

    CHECKOV, else `checkov` on PATH, else pyproject's `checkov` dependency group at the
    versions uv.lock pins (what `nox -s checkov` installs), synced once into a virtualenv
    of this run's.
    """
    path = os.environ.get("CHECKOV") or shutil.which("checkov")
    uv = shutil.which("uv")
    missing = (
        "checkov is not installed: install uv (`pip install uv`), or install checkov in its "
        "own virtualenv (`uv tool install checkov`) and set CHECKOV to its path"
    )
    if path or not uv:
        return [require_tool(missing, path)]
    venv = tmp_path_factory.mktemp("checkov") / "venv"
    command = [uv, "sync", "--locked", "--only-group=checkov", "--project", str(REPO)]
    made = subprocess.run(
        command,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if made.returncode != 0:
        require_tool(f"`{' '.join(command)}` failed: {made.stderr[-2000:]}", None)
    return [str(venv / "bin" / "checkov")]


@pytest.fixture(scope="session", autouse=True)
def _terraform_cli_config(terraform_cli_config: Path | None) -> Path | None:
    """Every test here runs Terraform with the shared CLI configuration."""
    return terraform_cli_config


def copy_terraform(destination: Path) -> Path:
    """Copy terraform/ to `destination` without working directories, state or plans, with
    the account's own values pinned in each environment root (ACCOUNT_PINS)."""
    shutil.copytree(
        terraform.TERRAFORM_DIR,
        destination,
        ignore=shutil.ignore_patterns(".terraform", "*.tfstate", "*.tfstate.*", "tfplan"),
    )
    for root in (destination / "envs").iterdir():
        (root / ACCOUNT_PINS_FILE).write_text(ACCOUNT_PINS)
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
    terraform.apply(
        "dev",
        terraform_dir=work,
        var_files=[var_file],
        variables={"state_bucket_name": MOTO_STATE_BUCKET},
    )
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


def environment_names(
    outputs: Mapping[str, Any], state_bucket: str, root: Path | None = None
) -> dict[str, str]:
    """The fields of pipeline/aws_calls.py's resource patterns, from an environment's outputs.

    `root` is the environment root whose backend.hcl names the state key (default: the
    repository's).
    """
    env = str(outputs["environment"])
    backend = ((root or terraform.TERRAFORM_DIR / "envs" / env) / "backend.hcl").read_text()
    state_key = re.search(r'^key\s*=\s*"([^"]+)"', backend, flags=re.M)
    assert state_key, "backend.hcl names no key"
    promoted = list(outputs.get("promote_from_repository_names") or [])
    return {
        "environment": env,
        "region": str(outputs["aws_region"]),
        "account": str(outputs["deploy_role_arn"]).split(":")[4],
        "bucket": str(outputs["bucket_name"]),
        "cluster": str(outputs["cluster_name"]),
        "service": str(outputs["service_name"]),
        "repository": str(outputs["ecr_repository_name"]),
        "promote_from_repository": promoted[0] if promoted else "",
        "state_bucket": state_bucket,
        "state_key": state_key.group(1),
        "task_role_arn": str(outputs["task_role_arn"]),
        "execution_role_arn": str(outputs["execution_role_arn"]),
        "log_group": str(outputs["log_group_name"]),
        "api_token_secret_arn": str(outputs.get("api_token_secret_arn") or ""),
        "task_family": str(outputs["task_family"]),
        "compaction_role_arn": str(outputs["compaction_role_arn"]),
        "compaction_task_family": str(outputs["compaction_task_family"]),
    }


# The certificate variant of an environment: a name, its ACM certificate and the hosted
# zone Terraform writes the name's alias record into.
TLS_DOMAIN = "api.onnx-ship.test"


def tls_tfvars(endpoint: str, domain: str = TLS_DOMAIN) -> str:
    """Request an ACM certificate for `domain` and create its parent's hosted zone in the
    moto server at `endpoint`; the tfvars that give them to an environment root."""
    settings = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    certificate = boto3.client("acm", **settings).request_certificate(DomainName=domain)
    zone = boto3.client("route53", **settings).create_hosted_zone(
        Name=domain.split(".", 1)[1], CallerReference=domain
    )["HostedZone"]["Id"]
    return (
        f'certificate_arn = "{certificate["CertificateArn"]}"\n'
        f'domain_name     = "{domain}"\n'
        f'route53_zone_id = "{zone.rsplit("/", 1)[-1]}"\n'
    )


def in_parallel(function: Callable[[str], T], items: list[str]) -> dict[str, T]:
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return dict(zip(items, pool.map(function, items), strict=True))


def apply_everything(endpoint: str, work: Path, var_file: Path) -> dict[str, dict[str, Any]]:
    """Init and apply bootstrap, dev and prod in `work` against moto; their outputs by root.

    The environments look the account's OIDC provider up, so bootstrap creates it
    first; then the three roots apply in parallel (they share nothing else). Run it
    with TF_STATE_BUCKET set, as `nox -s apply` is.
    """
    bootstrap = work / "bootstrap"
    roots = {"bootstrap": bootstrap, **{env: work / "envs" / env for env in terraform.ENVIRONMENTS}}
    for root in roots.values():
        point_at_moto(root, endpoint)
    in_parallel(lambda name: terraform.init(roots[name]), list(roots))
    terraform.apply(bootstrap, extra_args=["-target=aws_iam_openid_connect_provider.github"])

    def apply(name: str) -> dict[str, Any]:
        if name == "bootstrap":
            terraform.apply(bootstrap)
        else:
            terraform.apply(name, terraform_dir=work, var_files=[var_file])
        return terraform.outputs(roots[name])

    return in_parallel(apply, list(roots))


def assume(endpoint: str, role_arn: str, *, web_identity: bool) -> dict[str, str]:
    """Credentials of `role_arn` from moto's STS, as AWS_* environment variables.

    The workflow gets the deploy role through GitHub's OIDC token
    (AssumeRoleWithWebIdentity). moto's STS checks neither the token nor the trust
    policy's conditions (any string of 4+ characters passes), and with its IAM
    authorisation on it fails both this call and AssumeRole of a role trusting a
    service principal (HTTP 500): call it while authorisation is off.
    """
    import boto3

    sts = boto3.client(
        "sts",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    session = role_arn.rsplit("/", 1)[-1]
    if web_identity:
        answer = sts.assume_role_with_web_identity(
            RoleArn=role_arn, RoleSessionName=session, WebIdentityToken="header.claims.signature"
        )
    else:
        answer = sts.assume_role(RoleArn=role_arn, RoleSessionName=session)
    credentials = answer["Credentials"]
    return {
        "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
        "AWS_SESSION_TOKEN": credentials["SessionToken"],
    }
