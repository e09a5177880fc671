"""Which of two commits came later, from the checkout's git history."""

from __future__ import annotations

import subprocess
from pathlib import Path


def contains(commit: str, earlier: str, repo: Path) -> bool | None:
    """Whether `commit`'s history holds `earlier` (`git merge-base --is-ancestor`; a commit
    holds itself): True or False, or None when the checkout `repo` cannot tell because it
    lacks either commit (a shallow clone: actions/checkout fetches one commit unless told
    `fetch-depth: 0`)."""
    try:
        result = subprocess.run(
            ["git", "merge-base", "--is-ancestor", earlier, commit],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    # 0: an ancestor; 1: not one; anything else (128): a commit it does not have.
    return {0: True, 1: False}.get(result.returncode)
