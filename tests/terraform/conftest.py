"""Terraform test fixtures: the tools, a provider mirror, and throwaway copies of the roots.

Nothing here writes into the repository: every `terraform init` runs in a copy of
`terraform/` under pytest's tmp directory. Tools that are missing skip the test
locally and fail it in CI (`CI=true`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import terraform

HERE = Path(__file__).resolve().parent
DEFAULT_PLUGIN_MIRROR = "/opt/tf-plugins"
MOTO_OVERRIDE_TEMPLATE = HERE / "moto_override.tf.tmpl"

# What the moto-based applies change, and only them: moto's Application Auto
# Scaling lacks ListTagsForResource, and nothing in moto runs a load balancer
# that would need deletion protection or keeps the bucket's objects worth saving.
MOTO_TFVARS = """\
enable_autoscaling  = false
deletion_protection = false
force_destroy       = true
"""


def require_tool(message: str, path: str | None) -> str:
    """`path` if the tool is there; otherwise skip locally with `message`, fail in CI."""
    if path and Path(path).is_file():
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def terraform_bin() -> str:
    try:
        return terraform.binary()
    except terraform.TerraformError as error:
        return require_tool(str(error), None)


@pytest.fixture(scope="session")
def checkov_bin() -> str:
    """CHECKOV (checkov lives in its own virtualenv, its pins clash with ours) or PATH."""
    return require_tool(
        "checkov is not installed: install it in its own virtualenv "
        "(`uv tool install checkov`) or set CHECKOV to its path",
        os.environ.get("CHECKOV") or shutil.which("checkov"),
    )


@pytest.fixture(scope="session", autouse=True)
def terraform_cli_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """Point Terraform at the local provider mirror (TF_PLUGIN_MIRROR) when there is one.

    Without a mirror Terraform uses the registry as usual, so the tests run
    wherever the registry is reachable.
    """
    mirror = Path(os.environ.get("TF_PLUGIN_MIRROR", DEFAULT_PLUGIN_MIRROR))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TF_IN_AUTOMATION", "1")
        patch.setenv("CHECKPOINT_DISABLE", "1")
        if not mirror.is_dir():
            yield None
            return
        config = tmp_path_factory.mktemp("terraform-cli") / "terraformrc"
        config.write_text(
            f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n'
        )
        patch.setenv("TF_CLI_CONFIG_FILE", str(config))
        yield config


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


@pytest.fixture
def terraform_copy(tmp_path: Path) -> Path:
    """A private copy of terraform/ for one test."""
    return copy_terraform(tmp_path / "terraform")
