"""Promotion by content: an environment ships the image its source environment verified
for the same code and the same model.

A successful release to dev tags its image `verified-<git tree>-<model sha256>` in dev's
repository. The git tree hash names the code exactly; merging `dev` into `prod` on
GitHub makes a new commit with every merge method (merge commit, squash,
rebase-and-merge: GitHub docs, "About merge methods on GitHub"), but when `prod` holds
nothing that `dev` lacks, the merged commit's tree is dev's tree, so prod finds the
image dev verified. A hotfix made on `prod` alone has a tree dev never saw: prod refuses
unless DEPLOY_UNVERIFIED is set, and the deployment record marks such a release.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

VERIFIED_PREFIX = "verified-"
OVERRIDE_VARIABLE = "DEPLOY_UNVERIFIED"
_TRUE = ("1", "true", "yes", "on")


class NotVerified(Exception):
    """The source environment never verified this code with this model (or a rollback
    there withdrew it); the message names the commit to deploy there first and the
    override."""


@dataclass(frozen=True)
class Provenance:
    """Where a promoted image comes from, for the deployment record."""

    source: str  # the environment that verified it, or "" when built unverified
    verified_tag: str
    unverified: bool = False

    def record(self) -> dict[str, object]:
        if self.unverified:
            return {"unverified": True, "verified_tag": self.verified_tag}
        return {"promoted_from": self.source, "verified_tag": self.verified_tag}


def git_tree(commit: str, repo: Path) -> str:
    """The tree hash (40 hex) of `commit` in the git checkout `repo`."""
    try:
        return subprocess.run(
            ["git", "rev-parse", f"{commit}^{{tree}}"],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = (getattr(exc, "stderr", "") or str(exc)).strip()
        raise NotVerified(
            f"cannot read the git tree of {commit} in {repo} ({detail}): deploy from a checkout "
            "that holds the commit (actions/checkout does)"
        ) from None


def verified_tag(tree: str, model_sha256: str) -> str:
    """`verified-<tree>-<model sha256>`: 114 characters, within ECR's 128 for a tag."""
    return f"{VERIFIED_PREFIX}{tree}-{model_sha256}"


def commit_tag(commit: str, model_sha256: str, repo: Path) -> str:
    """The verified tag of `commit`'s code (its tree in the checkout `repo`) with the model
    `model_sha256`. Raises NotVerified when the checkout does not hold the commit."""
    return verified_tag(git_tree(commit, repo), model_sha256)


def override_requested(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(OVERRIDE_VARIABLE, "").strip().lower() in _TRUE


def choose(
    *,
    environment: str,
    source: str,
    commit: str,
    tree: str,
    model_sha256: str,
    has_tag: Callable[[str], bool],
    environ: Mapping[str, str] | None = None,
) -> Provenance:
    """The provenance of what `environment` may ship for `commit` and this model.

    `has_tag(tag)` says whether the source repository holds `tag`. Raises NotVerified
    when it does not and the override is not set.
    """
    tag = verified_tag(tree, model_sha256)
    if has_tag(tag):
        return Provenance(source=source, verified_tag=tag)
    if override_requested(environ):
        return Provenance(source="", verified_tag=tag, unverified=True)
    raise NotVerified(
        f"{source} never verified this code with this model, or a rollback there withdrew it "
        f"(tree {tree[:12]}, model {model_sha256[:12]}): deploy commit {commit[:12]} to "
        f"{source} first (merge it into {source} and push), then deploy {environment} "
        f"again; or set {OVERRIDE_VARIABLE}=true to build an unverified image for "
        f"{environment} (its deployment record says so)"
    )
