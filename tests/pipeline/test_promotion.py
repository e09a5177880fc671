"""Promotion by content, on real git histories: what dev verified is what prod finds,
whichever way GitHub merges `dev` into `prod`; a hotfix made on `prod` alone is refused."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import promotion

MODEL = "f" * 64


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


# GitHub commits merges as itself: a new committer, so a new sha even for the same tree.
AS_GITHUB = ("-c", "user.name=GitHub", "-c", "user.email=noreply@github.com")


def commit(repo: Path, name: str, text: str, message: str) -> str:
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """prod at a first release; dev two commits ahead of it."""
    git(tmp_path, "init", "-q", "-b", "prod")
    git(tmp_path, "config", "user.email", "ci@example.com")
    git(tmp_path, "config", "user.name", "ci")
    commit(tmp_path, "service.py", "v1\n", "first release")
    git(tmp_path, "checkout", "-q", "-b", "dev")
    commit(tmp_path, "service.py", "v2\n", "faster codec")
    commit(tmp_path, "model.toml", "sha = 'f'\n", "new model")
    git(tmp_path, "checkout", "-q", "prod")
    return tmp_path


def verified_on_dev(repo: Path) -> set[str]:
    """The tags dev's release leaves: one for the tree of dev's head."""
    head = git(repo, "rev-parse", "dev")
    return {promotion.verified_tag(promotion.git_tree(head, repo), MODEL)}


def merge_commit(repo: Path) -> None:
    git(repo, *AS_GITHUB, "merge", "-q", "--no-ff", "-m", "Merge dev into prod", "dev")


def squash(repo: Path) -> None:
    git(repo, "merge", "-q", "--squash", "dev")
    git(repo, *AS_GITHUB, "commit", "-q", "-m", "dev (squashed)")


def rebase_and_merge(repo: Path) -> None:
    # GitHub rewrites each commit on top of the base (new shas, same trees).
    for sha in git(repo, "rev-list", "--reverse", "prod..dev").split():
        git(repo, *AS_GITHUB, "cherry-pick", sha)


def choose(repo: Path, tags: set[str], environ: dict[str, str] | None = None):
    head = git(repo, "rev-parse", "HEAD")
    return promotion.choose(
        environment="prod",
        source="dev",
        commit=head,
        tree=promotion.git_tree(head, repo),
        model_sha256=MODEL,
        has_tag=tags.__contains__,
        environ=environ or {},
    )


@pytest.mark.parametrize("merge", [merge_commit, squash, rebase_and_merge])
def test_prod_finds_what_dev_verified_whatever_the_merge_method(
    repo: Path, merge: Callable[[Path], None]
) -> None:
    tags = verified_on_dev(repo)
    dev_head = git(repo, "rev-parse", "dev")
    merge(repo)
    assert git(repo, "rev-parse", "HEAD") != dev_head  # a new commit, as on GitHub
    chosen = choose(repo, tags)
    assert not chosen.unverified
    assert chosen.verified_tag in tags
    assert chosen.record() == {"promoted_from": "dev", "verified_tag": chosen.verified_tag}


def test_a_hotfix_on_prod_alone_is_refused_naming_the_commit_to_deploy_to_dev(repo: Path) -> None:
    tags = verified_on_dev(repo)
    merge_commit(repo)
    hotfix = commit(repo, "service.py", "v2 + hotfix\n", "hotfix")
    with pytest.raises(promotion.NotVerified) as refused:
        choose(repo, tags)
    message = str(refused.value)
    assert f"deploy commit {hotfix[:12]} to dev first" in message
    assert "DEPLOY_UNVERIFIED=true" in message and "\n" not in message


def test_another_model_on_the_same_code_is_not_what_dev_verified(repo: Path) -> None:
    merge_commit(repo)
    head = git(repo, "rev-parse", "HEAD")
    other = {promotion.verified_tag(promotion.git_tree(head, repo), "e" * 64)}
    with pytest.raises(promotion.NotVerified, match="never verified this code with this model"):
        choose(repo, other)


def test_the_override_builds_unverified_and_the_record_says_so(repo: Path) -> None:
    commit(repo, "service.py", "hotfix\n", "hotfix")
    chosen = choose(repo, set(), environ={"DEPLOY_UNVERIFIED": "true"})
    assert chosen.unverified
    assert chosen.record()["unverified"] is True


def test_the_tag_fits_ecr() -> None:
    assert len(promotion.verified_tag("a" * 40, MODEL)) <= 128  # ECR's limit for a tag
