"""pipeline.history: which of two commits came later, from a real git history."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline.history import contains


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "commit", "--allow-empty", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def test_a_later_commit_holds_the_earlier_one_and_not_the_reverse(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "-b", "dev")
    first = commit(tmp_path, "first")
    second = commit(tmp_path, "second")
    git(tmp_path, "checkout", "-q", "-b", "side", first)
    aside = commit(tmp_path, "aside")
    assert contains(second, first, tmp_path) is True
    assert contains(first, second, tmp_path) is False
    assert contains(second, second, tmp_path) is True
    assert contains(aside, second, tmp_path) is False  # other branches: neither is later
    # A commit the checkout lacks (a shallow clone): it cannot tell.
    assert contains(second, "f" * 40, tmp_path) is None
    assert contains(second, first, tmp_path / "not-a-repository") is None
