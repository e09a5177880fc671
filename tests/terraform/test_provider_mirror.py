"""pipeline/provider_mirror.py: one install of the providers, every other init a link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline import provider_mirror, terraform
from tests.terraform.conftest import copy_terraform

pytestmark = pytest.mark.integration


def size(path: Path) -> int:
    """Bytes under `path`, not following links (what a directory's copy would cost)."""
    return sum(entry.lstat().st_size for entry in path.rglob("*"))


def test_inits_from_the_mirror_link_the_providers_instead_of_copying_them(
    terraform_bin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nox -s lint test` initialises about 27 roots; on a GitHub runner each would unpack
    the 675 MB aws provider into its own `.terraform/` (18 GB against the runner's 14 GB).
    Built once with whatever installs providers here, the mirror makes every later init
    a link."""
    config = provider_mirror.prepare(tmp_path / "mirror")
    mirror = provider_mirror.providers(tmp_path / "mirror")
    (installed,) = mirror.glob("registry.terraform.io/hashicorp/aws/*/*/terraform-provider-*")
    assert config.read_text() == (
        f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror.resolve()}"\n'
        "  }\n}\n"
    )
    assert "TF_DATA_DIR" not in os.environ
    # A second prepare checks what is there and keeps it: the same provider, not a copy.
    assert provider_mirror.prepare(tmp_path / "mirror") == config
    assert list(mirror.glob("registry.terraform.io/hashicorp/aws/*/*/terraform-provider-*")) == [
        installed
    ]

    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(config))
    work = copy_terraform(tmp_path / "terraform")
    root = work / "envs" / "prod"
    terraform.init(root, backend=False, extra_args=["-lockfile=readonly"])
    (linked,) = (root / ".terraform" / "providers").glob("registry.terraform.io/hashicorp/aws/*/*")
    assert linked.is_symlink()
    assert linked.resolve() == installed.parent.resolve()
    assert size(root / ".terraform") < 1_000_000
    assert installed.stat().st_size > 100_000_000  # the provider itself: one copy
