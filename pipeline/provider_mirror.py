"""One copy of the Terraform providers for every `terraform init` of a test run.

Each `terraform init` installs the providers into its root's `.terraform/`: the
`hashicorp/aws` provider unpacks to 675 MB, and `nox -s lint test` initialises about
27 roots (validation of every root and module, the applies against moto), some 18 GB,
more than a GitHub-hosted runner's 14 GB disk (GitHub docs, "GitHub-hosted runners":
hardware resources). From a filesystem mirror in the *unpacked* layout `terraform init`
links each provider instead of copying it, and reading a mirror is safe for inits that
run at once, where the plugin cache directory is not (Terraform docs, CLI
configuration, "Provider installation": `filesystem_mirror`, "Provider plugin cache").

`build` installs the providers once, with one `terraform init` whose data directory
is the mirror's (`TF_DATA_DIR`): what it installs under `providers/` is that layout,
`<host>/<namespace>/<type>/<version>/<os>_<arch>/`, checked against the lock file as
every init checks it, from wherever the active CLI configuration installs providers
(the registry by default). `cli_config` writes the CLI configuration that points
`terraform` at the mirror (`TF_CLI_CONFIG_FILE`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import terraform
from service.artifacts import default_cache_dir

CONFIG_NAME = "terraformrc"


def default_directory() -> Path:
    """Where the mirror lives unless told otherwise: beside the download cache."""
    return default_cache_dir() / "terraform-providers"


def providers(directory: Path) -> Path:
    """The mirror itself: `directory`'s `providers/` (the unpacked layout)."""
    return directory / "providers"


def build(directory: Path, root: Path | None = None) -> Path:
    """The mirror in `directory` of the providers `root` needs (default: the dev
    environment's root, whose lock file every root and module shares), by `terraform init
    -backend=false -lockfile=readonly` with its data directory there: it installs what the
    lock file pins and the mirror lacks (a first run, a provider upgrade) and checks what
    is there against the lock file's hashes; its path. Raises TerraformError when
    Terraform cannot install them (the registry out of reach: its message says why)."""
    directory.mkdir(parents=True, exist_ok=True)
    with _data_dir(directory):
        terraform.init(
            root or terraform.env_root("dev"), backend=False, extra_args=["-lockfile=readonly"]
        )
    return providers(directory)


def cli_config(mirror: Path, path: Path) -> Path:
    """Write at `path` a Terraform CLI configuration that installs every provider from
    `mirror` only; `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    quoted = str(mirror.resolve()).replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(
        f'provider_installation {{\n  filesystem_mirror {{\n    path = "{quoted}"\n  }}\n}}\n'
    )
    return path


def prepare(directory: Path | None = None) -> Path:
    """Build the mirror in `directory` (default: `default_directory()`) and write its CLI
    configuration there; the configuration's path, for `TF_CLI_CONFIG_FILE`."""
    directory = directory or default_directory()
    return cli_config(build(directory), directory / CONFIG_NAME)


@contextmanager
def _data_dir(directory: Path) -> Iterator[None]:
    """`TF_DATA_DIR` set to `directory` for the Terraform runs inside (they inherit this
    process's environment)."""
    before = os.environ.get("TF_DATA_DIR")
    os.environ["TF_DATA_DIR"] = str(directory)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TF_DATA_DIR", None)
        else:
            os.environ["TF_DATA_DIR"] = before
