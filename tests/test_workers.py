"""pytest-xdist's work units (tests/workers.py): a test file at a time, podman's together."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from types import SimpleNamespace

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


def test_the_scheduler_takes_a_file_at_a_time_and_podmans_files_together() -> None:
    config = SimpleNamespace(getvalue={"dist": "loadfile", "tx": ["2*popen"]}.get)
    scheduler = workers.make_scheduler(config, None)
    assert scheduler._split_scope("tests/service/test_v2.py::test_x[a::b]") == (
        "tests/service/test_v2.py"
    )
    assert {scheduler._split_scope(f"{path}::test_x") for path in workers.PODMAN_FILES} == {
        workers.PODMAN_UNIT
    }
    other = SimpleNamespace(getvalue={"dist": "load", "tx": ["2*popen"]}.get)
    assert workers.make_scheduler(other, None) is None


def test_two_workers_run_each_file_on_one_of_them() -> None:
    """With this pytest and pytest-xdist for real: each file's tests all ran on one worker."""
    files = ["tests/service/test_config.py", "tests/service/test_logs.py"]
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile", "-v",
         "-p", "no:cacheprovider", *files],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:]
    seen: dict[str, set[str]] = {}
    for worker, path in re.findall(r"\[(gw\d+)\].*? PASSED (\S+?)::", ran.stdout):
        seen.setdefault(path, set()).add(worker)
    assert set(seen) == set(files)
    assert all(len(on) == 1 for on in seen.values()), seen
