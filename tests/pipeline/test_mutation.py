"""The mutation report: mutmut's results read back into file:line and scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import mutation
from pipeline.mutation import MutationError

SOURCE = '''"""A module."""


def plain(x):
    return x + 1


class Box:
    @property
    def size(self):
        total = 0
        return total * 2
'''

DIFF = """--- m.py
+++ m.py
@@ -1,3 +1,3 @@
 def size(self):
     total = 0
-    return total * 2
+    return total / 2"""


def test_mutant_names_map_to_the_functions_and_their_first_lines():
    lines = mutation.function_lines(SOURCE)
    assert lines == {"plain": 4, "xǁBoxǁsize": 9}
    assert mutation.function_key("pkg.m.x_plain__mutmut_3", "pkg/m.py") == "plain"
    assert mutation.function_key("pkg.m.xǁBoxǁsize__mutmut_12", "pkg/m.py") == "xǁBoxǁsize"
    assert mutation.mutant_glob("service/capture/records.py") == "service.capture.records.*"


def test_the_changed_line_is_located_in_the_file():
    # `size` starts at line 9 (its decorator); the diff's third line is line 11 of the file.
    assert mutation.locate(DIFF, 9) == (11, "`return total * 2` -> `return total / 2`")


def test_scores_and_the_report_from_mutmuts_results(tmp_path: Path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(SOURCE)
    meta = tmp_path / "mutants" / "pkg" / "m.py.meta"
    meta.parent.mkdir(parents=True)
    codes = {
        "pkg.m.x_plain__mutmut_1": 1,
        "pkg.m.x_plain__mutmut_2": 36,
        "pkg.m.xǁBoxǁsize__mutmut_1": 0,
        "pkg.m.xǁBoxǁsize__mutmut_2": 33,
        "pkg.m.xǁBoxǁsize__mutmut_3": None,
    }
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    monkeypatch.setattr(mutation, "show", lambda name, module: DIFF)
    score = mutation.score_module("pkg/m.py", root=tmp_path)
    assert (score.total, score.killed, score.timeouts, score.unchecked) == (5, 1, 1, 1)
    assert score.score == pytest.approx(50.0)  # 2 of the 4 checked
    assert score.reached_score == pytest.approx(200 / 3)  # 2 of the 3 a test calls
    assert score.survivors == (
        mutation.Survivor(
            "pkg.m.xǁBoxǁsize__mutmut_1", 11, "`return total * 2` -> `return total / 2`"
        ),
    )
    text = mutation.report([score])
    assert "| `pkg/m.py` | 5 | 2 | 1 | 1 | 50.0% | 66.7% |" in text
    assert "- `pkg/m.py:11` `return total * 2` -> `return total / 2`" in text
    assert "- `pkg/m.py:9` `xǁBoxǁsize`".replace("ǁ", ".") in text


def test_missing_results_and_unknown_modules_are_named(tmp_path: Path):
    with pytest.raises(MutationError, match=r"no mutmut results for pkg/m\.py"):
        mutation.score_module("pkg/m.py", root=tmp_path)
    with pytest.raises(MutationError, match=r"not a core module: service/app\.py"):
        mutation.select(["service/app.py"], changed=False)


def test_the_core_is_what_pyproject_names():
    core = mutation.core_modules(mutation.core_patterns())
    assert "service/codec.py" in core and "pipeline/release.py" in core
    assert "service/capture/records.py" in core
    assert not any(module.endswith("__init__.py") for module in core)
    assert mutation.select(["service/codec.py"], changed=False) == ["service/codec.py"]


def test_a_relative_fixtures_dir_reaches_mutmut_as_the_directory_it_names(tmp_path: Path):
    """mutmut runs the tests from `mutants/`: the README's relative FIXTURES_DIR must be
    resolved against where `nox -s mutation` was started, not there."""
    repo = tmp_path / "repo"
    repo.mkdir()
    given = {"FIXTURES_DIR": "../shared/fixtures", "PATH": "/usr/bin"}
    environment = mutation.mutmut_environment(given, repo)
    assert environment == {
        "FIXTURES_DIR": str(tmp_path / "shared" / "fixtures"),
        "PATH": "/usr/bin",
    }
    assert given["FIXTURES_DIR"] == "../shared/fixtures"
    assert mutation.mutmut_environment({"PATH": "/usr/bin"}, repo) == {"PATH": "/usr/bin"}


def test_changed_modules_are_those_of_the_whole_push_or_pull_request(tmp_path):
    """A push of several commits: the diff starts before the first of them (the event's
    `before`), not at HEAD~1; a pull request diffs against its base; a new branch's push
    (no before) and a run outside GitHub Actions use HEAD~1."""
    before, base = "1" * 40, "2" * 40
    push = tmp_path / "push.json"
    push.write_text(json.dumps({"before": before, "after": "3" * 40}))
    new_branch = tmp_path / "new.json"
    new_branch.write_text(json.dumps({"before": "0" * 40}))
    pull = tmp_path / "pull.json"
    pull.write_text(json.dumps({"pull_request": {"base": {"sha": base}}}))

    def since(path, event="push"):
        return mutation.changed_since({"GITHUB_EVENT_PATH": str(path), "GITHUB_EVENT_NAME": event})

    assert since(push) == before
    assert since(pull, "pull_request") == base
    assert since(new_branch) == "HEAD~1"
    assert since(tmp_path / "missing.json") == "HEAD~1"
    assert mutation.changed_since({}) == "HEAD~1"
