"""How pytest-xdist shares the tests among its workers (nox passes `--dist loadfile`).

A test file is one work unit, so its module fixtures (a Terraform apply, a server) are made
on one worker once; the files that build, run, tag, pull or remove images in podman's one
store on the machine are one unit together (PODMAN_FILES), so they run one after another
on one worker and the session's image is built once. The units go to the workers heaviest
first (nox passes `--no-loadscope-reorder`, so they are taken in the order of the items).

The units come from the test's file alone, through xdist's scheduler hook, not from
`xdist_group` marks: `--dist loadgroup` carries a mark by appending it to the test's node
id, which pytest 9.2 no longer reads, and the tests are then spread one by one without a
word (a fault known to pytest-xdist's maintainers, not fixed in 3.8).
"""

from __future__ import annotations

import collections
from typing import Any

import pytest

# tests/test_workers.py checks that these are the files that import the podman helpers
# (tests/pipeline/containers.py) or take the session's image (the `built` fixture).
PODMAN_FILES = frozenset(
    {
        "tests/pipeline/test_containers.py",
        "tests/pipeline/test_image.py",
        "tests/pipeline/test_image_on_fargate.py",
        "tests/terraform/test_deploy_e2e.py",
    }
)
PODMAN_UNIT = "podman"


def work_unit(nodeid: str) -> str:
    """The work unit of the test `nodeid` ("tests/x.py::test_y[1]"): its file, or
    PODMAN_UNIT for the files in PODMAN_FILES."""
    path = nodeid.split("::", 1)[0]
    return PODMAN_UNIT if path in PODMAN_FILES else path


def make_scheduler(config: Any, log: Any) -> Any:
    """xdist's `loadfile` scheduler with `work_unit` as its scope; None for any other
    `--dist` (xdist's own scheduler then)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesAndPodman(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return FilesAndPodman(config, log)


def heaviest_first(items: list[pytest.Item]) -> None:
    """Sort `items` so the work units whose tests need a longer `timeout` than the suite's
    (podman's, the Terraform applies) come first, then those with the most `slow` tests;
    stable, so each unit keeps its tests' order. The longest then start at once instead of
    ending the run alone."""
    slow: collections.Counter[str] = collections.Counter()
    timeout: collections.Counter[str] = collections.Counter()
    for item in items:
        unit = work_unit(item.nodeid)
        slow[unit] += item.get_closest_marker("slow") is not None
        bound = item.get_closest_marker("timeout")
        timeout[unit] = max(timeout[unit], bound.args[0] if bound and bound.args else 0)

    def weight(item: pytest.Item) -> tuple[int, int]:
        unit = work_unit(item.nodeid)
        return -timeout[unit], -slow[unit]

    items.sort(key=weight)
