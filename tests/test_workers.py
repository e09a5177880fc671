"""pytest-xdist's work units (tests/workers.py): a test file at a time, podman's together."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests import workers
from tests.conftest import REPO


def test_the_podman_files_are_the_tests_that_use_podman() -> None:
    """Every test file that imports the podman helpers or takes the session's image is in
    PODMAN_FILES, and nothing else is."""
    using = set()
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        helpers = any(
            isinstance(node, ast.ImportFrom) and node.module == "tests.pipeline.containers"
            for node in ast.walk(tree)
        )
        image = any(
            isinstance(node, ast.FunctionDef) and "built" in [a.arg for a in node.args.args]
            for node in ast.walk(tree)
        )
        if helpers or image:
            using.add(path.relative_to(REPO).as_posix())
    assert using == workers.PODMAN_FILES


class Worker:
    """What xdist's scheduler sees of a worker: the tests it is sent, by index."""

    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.sent: list[int] = []
        self.shutting_down = False

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def scheduled(collection: list[str]) -> dict[str, set[str]]:
    """Each test file of `collection`, the workers the project's scheduler (as the hook
    makes it for `--dist loadfile`) sent its tests to: two workers, each running its tests
    in turn until the queue is empty."""
    config = SimpleNamespace(
        getvalue={"dist": "loadfile", "tx": ["2*popen"]}.get,
        option=SimpleNamespace(loadscopereorder=False),
    )
    scheduler = workers.make_scheduler(config, None)
    nodes = [Worker("gw0"), Worker("gw1")]
    for node in nodes:
        scheduler.add_node(node)
        scheduler.add_node_collection(node, collection)
    scheduler.schedule()
    done = {node: 0 for node in nodes}
    for _ in range(len(collection)):  # a test a turn, each worker in turn
        for node in nodes:
            if done[node] < len(node.sent):
                scheduler.mark_test_complete(node, node.sent[done[node]])
                done[node] += 1
    assert sum(done.values()) == len(collection)
    files: dict[str, set[str]] = {}
    for node in nodes:
        for index in node.sent:
            files.setdefault(collection[index].split("::")[0], set()).add(node.gateway.id)
    return files


def test_the_scheduler_sends_a_file_to_one_worker_and_podmans_files_to_one() -> None:
    podman = sorted(workers.PODMAN_FILES)
    others = ["tests/service/test_a.py", "tests/service/test_b.py", "tests/test_c.py"]
    collection = [f"{path}::test_{n}" for path in [*podman, *others] for n in range(4)]
    files = scheduled(collection)
    assert all(len(on) == 1 for on in files.values()), files
    assert len(set().union(*(files[path] for path in podman))) == 1, files
    other = SimpleNamespace(getvalue={"dist": "load", "tx": ["2*popen"]}.get)
    assert workers.make_scheduler(other, None) is None


def item(nodeid: str, *, slow: bool = False, timeout: int | None = None) -> SimpleNamespace:
    marks = {"slow": SimpleNamespace(args=()) if slow else None}
    marks["timeout"] = SimpleNamespace(args=(timeout,)) if timeout else None
    return SimpleNamespace(nodeid=nodeid, get_closest_marker=marks.get)


def test_the_longest_units_go_first_each_keeping_its_order() -> None:
    e2e = "tests/terraform/test_deploy_e2e.py"
    items = [
        item("tests/a.py::t1"),
        item("tests/b.py::t1", slow=True),
        item("tests/b.py::t2"),
        item("tests/c.py::t1", timeout=600),
        item(f"{e2e}::dev"),
        item(f"{e2e}::prod", timeout=900),
        item("tests/pipeline/test_image.py::t1"),
    ]
    workers.heaviest_first(items)
    assert [i.nodeid for i in items] == [
        f"{e2e}::dev",  # podman's unit: its longest timeout is 900 s
        f"{e2e}::prod",
        "tests/pipeline/test_image.py::t1",
        "tests/c.py::t1",
        "tests/b.py::t1",  # one slow test
        "tests/b.py::t2",
        "tests/a.py::t1",
    ]


@pytest.mark.integration
def test_two_workers_run_each_file_on_one_of_them() -> None:
    """With this pytest and pytest-xdist for real, through the project's scheduler: each
    file's tests all ran on one worker."""
    files = ["tests/service/test_config.py", "tests/service/test_logs.py"]
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile", "-v",
         "-p", "no:cacheprovider", *files],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:]
    assert "scheduling tests via FilesAndPodman" in ran.stdout
    seen: dict[str, set[str]] = {}
    for worker, path in re.findall(r"\[(gw\d+)\].*? PASSED (\S+?)::", ran.stdout):
        seen.setdefault(path, set()).add(worker)
    assert set(seen) == set(files)
    assert all(len(on) == 1 for on in seen.values()), seen
