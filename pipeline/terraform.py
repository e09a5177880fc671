"""Drive Terraform for one environment through python-terraform.

Every function runs one Terraform command in one root and raises
`TerraformError` (one sentence naming the problem and the fix, then the tail of
Terraform's stderr) when the binary is missing or the command fails. Terraform
reads its CLI configuration from `TF_CLI_CONFIG_FILE` itself (tests point it at a
provider mirror); this module passes the environment through untouched.

Environment roots live in `terraform/envs/<env>`; their S3 backend is configured
at `init` from the root's `backend.hcl` plus the state bucket in
`TF_STATE_BUCKET` (created once by `terraform/bootstrap`).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from python_terraform import IsFlagged, Terraform

from pipeline import REPO, interrupts

TERRAFORM_DIR = REPO / "terraform"


def environments(terraform_dir: Path = TERRAFORM_DIR) -> tuple[str, ...]:
    """The environments: one Terraform root each, `terraform/envs/<name>/main.tf`.

    This directory is the one list of environments; adding `staging` is a root, its
    terraform.tfvars and a workflow branch.
    """
    envs = terraform_dir / "envs"
    if not envs.is_dir():
        return ()
    return tuple(sorted(p.name for p in envs.iterdir() if (p / "main.tf").is_file()))


ENVIRONMENTS = environments()

STATE_BUCKET_VARIABLE = "TF_STATE_BUCKET"
PLAN_FILE = "tfplan"
STDERR_TAIL_LINES = 20
LOCK_TIMEOUT = "60s"

MISSING_BINARY = (
    "terraform is not on PATH: install Terraform 1.11+ "
    "(https://developer.hashicorp.com/terraform/install) and retry"
)


class TerraformError(Exception):
    """A Terraform command could not run or failed; the message says what to do."""


@dataclass(frozen=True)
class PlanResult:
    """Outcome of `terraform plan -detailed-exitcode`."""

    changes: bool
    plan_file: Path
    output: str


# ---------------------------------------------------------------------------
# Roots
# ---------------------------------------------------------------------------


def env_root(env: str, terraform_dir: Path = TERRAFORM_DIR) -> Path:
    """The root module of environment `env` (terraform/envs/<env>)."""
    if env not in ENVIRONMENTS:
        raise TerraformError(
            f"unknown environment {env!r}: use one of {', '.join(ENVIRONMENTS)} "
            "(e.g. `nox -s plan -- dev`)"
        )
    root = terraform_dir / "envs" / env
    if not (root / "main.tf").is_file():
        raise TerraformError(
            f"{root} has no main.tf: run from a checkout holding terraform/envs/{env}"
        )
    return root


def resolve(target: str | Path, terraform_dir: Path = TERRAFORM_DIR) -> Path:
    """A root directory from an environment name (`"dev"`) or a path to any root."""
    if isinstance(target, Path):
        if not target.is_dir():
            raise TerraformError(
                f"{target} is not a directory: pass an environment name "
                f"({', '.join(ENVIRONMENTS)}) or a Terraform root"
            )
        return target
    return env_root(target, terraform_dir)


def roots(terraform_dir: Path = TERRAFORM_DIR) -> list[Path]:
    """Every root and module that `validate` should check: bootstrap, envs/*, modules/*."""
    found = [terraform_dir / "bootstrap"]
    found += sorted(p for p in (terraform_dir / "envs").iterdir() if (p / "main.tf").is_file())
    found += sorted(p for p in (terraform_dir / "modules").iterdir() if (p / "main.tf").is_file())
    return found


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def binary() -> str:
    """Path of the terraform binary (TERRAFORM overrides PATH lookup)."""
    path = os.environ.get("TERRAFORM") or shutil.which("terraform")
    if not path or not Path(path).is_file():
        raise TerraformError(MISSING_BINARY)
    return path


def _cmd(root: Path, command: str, *args: str, **options: Any) -> tuple[int, str, str]:
    """Run `terraform <command> -no-color` in `root` through python-terraform.

    An interrupt waits for terraform to end (`interrupts.deferred`): on the terminal's
    Ctrl-C terraform stops by itself, finishing what it was changing and saving its state
    ("Interrupt received. Please wait for Terraform to exit or data loss may occur"), and
    a parent that left at once would close terraform's output pipes, so its next line
    would end it (SIGPIPE) in the middle of that, its state unsaved and still locked."""
    terraform = Terraform(working_dir=str(root), terraform_bin_path=binary())
    with warnings.catch_warnings(), interrupts.deferred():
        # python-terraform logs failures through the deprecated Logger.warn.
        warnings.simplefilter("ignore", DeprecationWarning)
        code, out, err = terraform.cmd(command, *args, no_color=IsFlagged, **options)
    return code, out or "", err or ""


def _run(
    root: Path, command: str, *args: str, ok_codes: Sequence[int] = (0,), **options: Any
) -> tuple[int, str]:
    """Run `terraform <command>` in `root`; return (exit code, stdout) or raise."""
    code, out, err = _cmd(root, command, *args, **options)
    if code not in ok_codes:
        tail = "\n".join((err or out or "").strip().splitlines()[-STDERR_TAIL_LINES:])
        raise TerraformError(
            f"terraform {command} failed in {root} (exit {code}): fix the error below and "
            f"retry.\n{tail}"
        )
    return code, out or ""


def init(
    root: Path,
    *,
    backend: bool = True,
    backend_config: Sequence[str | Path] | Mapping[str, str] = (),
    extra_args: Sequence[str] = (),
) -> str:
    """`terraform init` in `root`.

    `backend_config` entries are files (`backend.hcl`) or `key=value` strings;
    a mapping is turned into `key=value` strings. `backend=False` skips the
    backend (enough for `validate`).
    """
    if isinstance(backend_config, Mapping):
        backend_config = [f"{key}={value}" for key, value in backend_config.items()]
    options: dict[str, Any] = {"input": False, "reconfigure": IsFlagged}
    if backend:
        options["backend_config"] = [str(item) for item in backend_config]
    else:
        options["backend"] = False
    return _run(root, "init", *extra_args, **options)[1]


def init_env(
    env: str,
    *,
    terraform_dir: Path = TERRAFORM_DIR,
    state_bucket: str | None = None,
    extra_args: Sequence[str] = (),
) -> Path:
    """Initialise environment `env` against its S3 state; return its root.

    The bucket comes from `state_bucket` or TF_STATE_BUCKET; the key and region
    from the root's backend.hcl.
    """
    root = env_root(env, terraform_dir)
    bucket = state_bucket or os.environ.get(STATE_BUCKET_VARIABLE)
    if not bucket:
        raise TerraformError(
            f"{STATE_BUCKET_VARIABLE} is not set: run the one-time bootstrap "
            "(terraform -chdir=terraform/bootstrap apply) and export "
            f"{STATE_BUCKET_VARIABLE}=$(terraform -chdir=terraform/bootstrap output -raw "
            "state_bucket_name)"
        )
    init(root, backend_config=[root / "backend.hcl", f"bucket={bucket}"], extra_args=extra_args)
    return root


def _arguments(
    target: str | Path,
    var_files: Sequence[str | Path],
    variables: Mapping[str, str] | None,
    extra_args: Sequence[str],
) -> list[str]:
    """-var-file/-var arguments; environments also get the state bucket from TF_STATE_BUCKET,
    so their deploy role may read their outputs."""
    merged = dict(variables or {})
    bucket = os.environ.get(STATE_BUCKET_VARIABLE)
    if isinstance(target, str) and bucket:
        merged.setdefault("state_bucket_name", bucket)
    args = [f"-var-file={Path(path)}" for path in var_files]
    args += [f"-var={name}={value}" for name, value in merged.items()]
    return args + list(extra_args)


def plan(
    env: str | Path,
    *,
    terraform_dir: Path = TERRAFORM_DIR,
    var_files: Sequence[str | Path] = (),
    variables: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> PlanResult:
    """`terraform plan -detailed-exitcode -out=tfplan` in an initialised environment or root."""
    root = resolve(env, terraform_dir)
    code, out = _run(
        root,
        "plan",
        *_arguments(env, var_files, variables, extra_args),
        ok_codes=(0, 2),
        input=False,
        lock_timeout=LOCK_TIMEOUT,
        detailed_exitcode=IsFlagged,
        out=PLAN_FILE,
    )
    return PlanResult(changes=code == 2, plan_file=root / PLAN_FILE, output=out)


def apply(
    env: str | Path,
    *,
    terraform_dir: Path = TERRAFORM_DIR,
    plan_file: Path | None = None,
    var_files: Sequence[str | Path] = (),
    variables: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> str:
    """`terraform apply`: the saved `plan_file` if given, else plan and apply in one go."""
    root = resolve(env, terraform_dir)
    if plan_file is not None:
        return _run(root, "apply", str(plan_file), input=False, lock_timeout=LOCK_TIMEOUT)[1]
    args = _arguments(env, var_files, variables, extra_args)
    return _run(
        root, "apply", *args, input=False, auto_approve=IsFlagged, lock_timeout=LOCK_TIMEOUT
    )[1]


def destroy(
    env: str | Path,
    *,
    terraform_dir: Path = TERRAFORM_DIR,
    var_files: Sequence[str | Path] = (),
    variables: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> str:
    """`terraform destroy -auto-approve` (python-terraform's own destroy passes the
    `-force` flag Terraform 0.15 removed, hence the plain command)."""
    root = resolve(env, terraform_dir)
    args = _arguments(env, var_files, variables, extra_args)
    return _run(
        root, "destroy", *args, input=False, auto_approve=IsFlagged, lock_timeout=LOCK_TIMEOUT
    )[1]


def outputs(env: str | Path, *, terraform_dir: Path = TERRAFORM_DIR) -> dict[str, Any]:
    """`terraform output -json` of `env` as {name: value}."""
    root = resolve(env, terraform_dir)
    out = _run(root, "output", json=IsFlagged)[1]
    try:
        raw = json.loads(out or "{}")
    except json.JSONDecodeError as error:
        raise TerraformError(
            f"terraform output -json in {root} did not print JSON ({error}): "
            "run `terraform output -json` there to see why"
        ) from None
    return {name: item["value"] for name, item in raw.items()}


def show_json(root: Path, plan_file: Path | None = None) -> dict[str, Any]:
    """`terraform show -json` of the state (or of `plan_file`) in `root`."""
    args = [str(plan_file)] if plan_file is not None else []
    return json.loads(_run(root, "show", *args, json=IsFlagged)[1] or "{}")


def validate(root: Path) -> None:
    """`terraform init -backend=false` then `terraform validate` in `root`."""
    init(root, backend=False)
    _run(root, "validate")


def fmt_check(path: Path = TERRAFORM_DIR) -> None:
    """`terraform fmt -check -recursive`; the error lists the files to format."""
    code, out, err = _cmd(path, "fmt", check=IsFlagged, recursive=IsFlagged)
    if code != 0:
        files = " ".join((out or "").split()) or (err or "").strip()
        raise TerraformError(
            f"terraform files are not formatted: run `terraform fmt -recursive {path}` ({files})"
        )


def lint(terraform_dir: Path = TERRAFORM_DIR) -> list[Path]:
    """`fmt -check`, then `init -backend=false` + `validate` of every root and module."""
    fmt_check(terraform_dir)
    checked = roots(terraform_dir)
    for root in checked:
        validate(root)
    return checked
