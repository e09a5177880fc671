"""Environments are data: adding `staging` is a Terraform root (terraform/envs/staging, the
shared files copied), its terraform.tfvars and backend.hcl, and a workflow branch. Nothing
in the service, the pipeline, the noxfile or the tests names an environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from pipeline.environment import environments, override_name
from service.config import Settings
from tests.conftest import REPO
from tests.pipeline.environments import make_environment

SHARED_ROOT_FILES = ("main.tf", "variables.tf", "outputs.tf", "versions.tf")


def add_staging(checkout: Path) -> None:
    """What a user does for a `staging` environment promoting from dev, and only that."""
    dev, staging = (
        checkout / "terraform" / "envs" / "dev",
        checkout / "terraform" / "envs" / "staging",
    )
    staging.mkdir()
    for name in SHARED_ROOT_FILES:
        shutil.copy2(dev / name, staging / name)
    tfvars = (
        (dev / "terraform.tfvars")
        .read_text()
        .replace('environment = "dev"', 'environment = "staging"')
    )
    (staging / "terraform.tfvars").write_text(tfvars + '\npromote_from_environments = ["dev"]\n')
    backend = (dev / "backend.hcl").read_text().replace("/dev/", "/staging/")
    (staging / "backend.hcl").write_text(backend)
    workflow = checkout / ".github" / "workflows" / "pipeline.yml"
    text = workflow.read_text()
    assert "branches: [dev, prod]" in text
    workflow.write_text(text.replace("branches: [dev, prod]", "branches: [dev, staging, prod]"))


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the committed tree, with staging added."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tmp_path / name)
    add_staging(tmp_path)
    return tmp_path


def test_the_terraform_roots_are_the_list_of_environments(checkout: Path) -> None:
    assert environments(checkout / "terraform") == ("dev", "prod", "staging")
    assert environments(REPO / "terraform") == ("dev", "prod")


def test_nox_offers_deploy_staging(checkout: Path) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "nox", "-l"], cwd=checkout, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    assert "deploy-staging" in listed.stdout


def test_the_service_records_under_any_environment_name() -> None:
    assert Settings(model_url="m", app_env="staging").app_env == "staging"


@pytest.mark.integration
def test_the_pipeline_knows_staging_and_whom_it_promotes_from(aws, checkout: Path) -> None:
    env = make_environment("http://127.0.0.1:9", name="onnx-ship-staging", environment="staging")
    given = {
        override_name("staging", name): value
        for name, value in asdict(env).items()
        if name not in ("environment", "promote_from")
    }
    given[override_name("staging", "promote_from_environments")] = "dev"

    def run(*command: str) -> str:
        done = subprocess.run(
            [sys.executable, *command],
            cwd=checkout,
            capture_output=True,
            text=True,
            env={**os.environ, **given},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    resolved = "from pipeline.environment import resolve; print(resolve('staging').promote_from)"
    assert run("-c", resolved).strip() == "('dev',)"
    assert "staging" in run("-m", "pipeline", "status", "staging")


def test_the_token_secret_comes_from_its_output_or_its_variable() -> None:
    from pipeline.environment import REQUIRED, resolve

    outputs = {name: f"{name}-value" for name in REQUIRED}
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:onnx-ship-dev-api-tokens-AbCdEf"
    with_secret = resolve(
        "dev", terraform_outputs=lambda e: {**outputs, "api_token_secret_arn": arn}, environ={}
    )
    assert with_secret.api_token_secret_arn == arn
    # Authentication off: Terraform's output is null, and nothing is read.
    without = resolve(
        "dev", terraform_outputs=lambda e: {**outputs, "api_token_secret_arn": None}, environ={}
    )
    assert without.api_token_secret_arn == "" and without.api_token() is None
    given = resolve(
        "dev", terraform_outputs=lambda e: outputs, environ={"DEV_API_TOKEN_SECRET_ARN": arn}
    )
    assert given.api_token_secret_arn == arn


def _hcl_string(text: str, name: str) -> str | None:
    """The string `name = "..."` sets at the top level of a tfvars or backend file."""
    import re

    found = re.search(rf'^\s*{name}\s*=\s*"([^"]*)"', text, re.MULTILINE)
    return found.group(1) if found else None


def test_every_environment_and_its_state_name_one_region() -> None:
    """An environment promotes from a repository of its own account and region (the deploy
    role's pull grant and the registry login are prod's region's), so every root's
    `aws_region` (its terraform.tfvars, else the variable's default) and its backend's
    region are one."""
    import re

    regions = {}
    for root in sorted((REPO / "terraform" / "envs").iterdir()):
        default = re.search(
            r'variable "aws_region" \{.*?default\s*=\s*"([^"]+)"',
            (root / "variables.tf").read_text(),
            re.DOTALL,
        )
        tfvars = _hcl_string((root / "terraform.tfvars").read_text(), "aws_region")
        regions[root.name] = tfvars or (default.group(1) if default else None)
        regions[f"{root.name} state"] = _hcl_string((root / "backend.hcl").read_text(), "region")
    assert None not in regions.values(), regions
    assert len(set(regions.values())) == 1, (
        f"the environments name more than one region: {regions}; set the same aws_region in "
        "every terraform/envs/*/terraform.tfvars and the same region in every backend.hcl"
    )
