"""Mutation testing of the core modules with mutmut, and its report.

mutmut (https://mutmut.readthedocs.io) copies the tree into `mutants/`, changes one
operator, constant or call at a time and runs the fast tests that reach the changed
function; a change no test notices "survives". `[tool.mutmut]` in pyproject.toml says what
is mutated (`only_mutate`) and which tests run. This module picks the modules (all of
them, the ones named, or the ones a push or pull request changed), runs mutmut on them, then reads
mutmut's results (`mutants/<module>.meta`) and writes `build/mutation/report.md`: the
score per module and every survivor with its file:line and the change.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import subprocess
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline import REPO

REPORT = REPO / "build" / "mutation" / "report.md"
MUTANTS = REPO / "mutants"
# mutmut's exit codes (mutmut/stats.py): 1 and 3 are a test failing, 0 a survivor.
KILLED = {1, 3}
SURVIVED = {0}
TIMEOUT = {36, 24, -24, 152, 255}
NO_TESTS = {5, 33}


class MutationError(Exception):
    """The mutation run cannot start or did not finish."""


def core_patterns(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The globs of the core modules: `[tool.mutmut] only_mutate`."""
    return tomllib.loads(pyproject.read_text())["tool"]["mutmut"]["only_mutate"]


def core_modules(patterns: list[str], root: Path = REPO) -> list[str]:
    """The repository paths the patterns match, sorted (e.g. `service/codec.py`)."""
    found = {
        str(path.relative_to(root))
        for pattern in patterns
        for path in root.glob(pattern)
        if path.name != "__init__.py"
    }
    return sorted(found)


def changed_since(environ: Mapping[str, str]) -> str:
    """The commit `--changed` diffs against: in GitHub Actions, the commit before a push
    (all of its commits, not only the last) or a pull request's base; else HEAD~1. From
    the event's payload (`GITHUB_EVENT_PATH`: `before` of a push, `pull_request.base.sha`;
    GitHub docs, "Webhook events and payloads"); a new branch's push has no before
    (forty zeros) and falls back to HEAD~1."""
    path = environ.get("GITHUB_EVENT_PATH")
    if not path:
        return "HEAD~1"
    try:
        event = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return "HEAD~1"
    if environ.get("GITHUB_EVENT_NAME") == "pull_request":
        before = str(event.get("pull_request", {}).get("base", {}).get("sha", ""))
    else:
        before = str(event.get("before", ""))
    return before if re.fullmatch(r"[0-9a-f]{40}", before) and before.strip("0") else "HEAD~1"


def changed_core_modules(core: list[str], since: str = "HEAD~1") -> list[str]:
    """The core modules among the files changed since `since` (git diff --name-only)."""
    done = subprocess.run(
        ["git", "diff", "--name-only", since],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise MutationError(
            f"git diff --name-only {since} failed ({done.stderr.strip()}): run from a clone "
            "with that commit, or name the modules instead of --changed"
        )
    changed = set(done.stdout.split())
    return [module for module in core if module in changed]


def mutant_glob(module: str) -> str:
    """mutmut's name for every mutant of a module: `service/codec.py` -> `service.codec.*`."""
    return module.removesuffix(".py").replace("/", ".") + ".*"


def mutmut_environment(environ: Mapping[str, str], cwd: Path) -> dict[str, str]:
    """`environ` with FIXTURES_DIR made absolute against `cwd`: mutmut runs the tests from
    its copy of the tree (`mutants/`), where a relative path (the README's
    `../shared/fixtures`) would name another directory."""
    environment = dict(environ)
    if environment.get("FIXTURES_DIR"):
        environment["FIXTURES_DIR"] = str((cwd / environment["FIXTURES_DIR"]).resolve())
    return environment


def run_mutmut(modules: list[str], max_children: int | None = None) -> None:
    """`mutmut run` over the mutants of `modules` (mutmut's own output goes to the terminal)."""
    command = ["mutmut", "run"]
    if max_children:
        command += ["--max-children", str(max_children)]
    command += [mutant_glob(module) for module in modules]
    environment = mutmut_environment(os.environ, Path.cwd())
    done = subprocess.run(command, cwd=REPO, env=environment, check=False)
    if done.returncode != 0:
        raise MutationError(
            f"mutmut run exited with {done.returncode}: its output above names the cause "
            "(a test that fails without any mutant must be fixed first)"
        )


@dataclass(frozen=True)
class Survivor:
    name: str
    line: int
    change: str


@dataclass(frozen=True)
class ModuleScore:
    module: str
    total: int
    killed: int
    timeouts: int
    survivors: tuple[Survivor, ...]
    uncovered: tuple[Survivor, ...]
    unchecked: int

    @property
    def score(self) -> float:
        """Killed (a timeout is a kill too: the test run never passed) over checked mutants."""
        checked = self.total - self.unchecked
        return 100.0 * (self.killed + self.timeouts) / checked if checked else 0.0

    @property
    def no_tests(self) -> int:
        return sum(int(u.change.split()[0]) for u in self.uncovered)

    @property
    def reached_score(self) -> float:
        """The same over the mutants some fast test reaches (the others only integration
        tests exercise)."""
        reached = self.total - self.unchecked - self.no_tests
        return 100.0 * (self.killed + self.timeouts) / reached if reached else 0.0


def function_lines(source: str) -> dict[str, int]:
    """The first line (decorators included) of every function, by mutmut's key for it:
    `name` for a module function, `xǁClassǁname` for a method."""
    lines = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines[f"xǁ{node.name}ǁ{item.name}"] = first_line(item)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines[node.name] = first_line(node)
    return lines


def first_line(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    return min([node.lineno, *(d.lineno for d in node.decorator_list)])


def function_key(mutant: str, module: str) -> str:
    """`service.codec.x_decode__mutmut_3` -> `decode`; `...xǁStoreǁput__mutmut_1` ->
    `xǁStoreǁput`."""
    prefix = module.removesuffix(".py").replace("/", ".") + "."
    name = mutant.removeprefix(prefix).rsplit("__mutmut_", 1)[0]
    return name if name.startswith("xǁ") else name.removeprefix("x_")


def show(mutant: str, module: str) -> str:
    """The unified diff of the mutated function, as `mutmut show <mutant>` prints it (read
    in-process from mutmut's index: one `mutmut show` per survivor costs a second each)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    cwd = Path.cwd()
    os.chdir(REPO)  # mutmut reads mutants/ relative to the working directory
    try:
        return get_diff_for_mutant(mutant, path=module)
    finally:
        os.chdir(cwd)


def locate(diff: str, start: int) -> tuple[int, str]:
    """The file line of the diff's first changed line (the function starts at `start`) and
    the change as `old` -> `new`."""
    removed, added = [], []
    line, first = start, None
    for text in diff.splitlines():
        hunk = re.match(r"@@ -(\d+)", text)
        if hunk:
            line = start + int(hunk.group(1)) - 1
        elif text.startswith("---") or text.startswith("+++"):
            continue
        elif text.startswith("-"):
            first = line if first is None else first
            removed.append(text[1:].strip())
            line += 1
        elif text.startswith("+"):
            first = line if first is None else first
            added.append(text[1:].strip())
        elif text.startswith(" "):
            line += 1
    return (first or start), f"`{' '.join(removed)}` -> `{' '.join(added)}`"


def score_module(module: str, root: Path = REPO) -> ModuleScore:
    """The module's results from mutmut's `mutants/<module>.meta`."""
    meta = root / "mutants" / f"{module}.meta"
    if not meta.exists():
        raise MutationError(f"no mutmut results for {module} ({meta}): run nox -s mutation")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    lines = function_lines((root / module).read_text())
    survivors = []
    for name in sorted(n for n, code in codes.items() if code in SURVIVED):
        line, change = locate(show(name, module), lines.get(function_key(name, module), 1))
        survivors.append(Survivor(name, line, change))
    survivors.sort(key=lambda s: (s.line, s.name))
    # Mutants of functions no selected test calls: one line per function.
    uncovered: dict[str, int] = {}
    for name, code in codes.items():
        if code in NO_TESTS:
            key = function_key(name, module)
            uncovered[key] = uncovered.get(key, 0) + 1
    return ModuleScore(
        module=module,
        total=len(codes),
        killed=sum(code in KILLED for code in codes.values()),
        timeouts=sum(code in TIMEOUT for code in codes.values()),
        survivors=tuple(survivors),
        uncovered=tuple(
            Survivor(key.replace("ǁ", "."), lines.get(key, 1), f"{count} mutants")
            for key, count in sorted(uncovered.items(), key=lambda kv: lines.get(kv[0], 1))
        ),
        unchecked=sum(code is None for code in codes.values()),
    )


def report(scores: list[ModuleScore]) -> str:
    """Markdown: a score table, then each module's survivors as `file:line` and the change."""
    rows = [
        "# Mutation testing (mutmut)",
        "",
        "Score: killed (a timeout counts as killed) over the mutants checked, a mutant of a",
        "function no fast test calls counting as not killed; reached: the same over the",
        "mutants some fast test calls.",
        "",
        "| module | mutants | killed | survived | no fast test calls it | score | reached |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scores:
        rows.append(
            f"| `{s.module}` | {s.total} | {s.killed + s.timeouts} | {len(s.survivors)} "
            f"| {s.no_tests} | {s.score:.1f}% | {s.reached_score:.1f}% |"
        )
    for s in scores:
        if s.survivors:
            rows += ["", f"## Survivors in `{s.module}`", ""]
            rows += [f"- `{s.module}:{v.line}` {v.change} ({v.name})" for v in s.survivors]
        if s.uncovered:
            rows += ["", f"## Functions of `{s.module}` no fast test calls", ""]
            rows += [f"- `{s.module}:{u.line}` `{u.name}`: {u.change}" for u in s.uncovered]
    return "\n".join(rows) + "\n"


def select(modules: list[str], changed: bool) -> list[str]:
    """The modules to mutate: those named (each must be a core module), the changed ones, or
    all of them."""
    core = core_modules(core_patterns())
    if changed:
        return changed_core_modules(core, changed_since(os.environ))
    if not modules:
        return core
    unknown = [m for m in modules if not any(fnmatch.fnmatch(m, p) for p in core_patterns())]
    if unknown:
        raise MutationError(
            f"not a core module: {', '.join(unknown)}; pick from {', '.join(core)} "
            "(or add it to [tool.mutmut] only_mutate in pyproject.toml)"
        )
    return sorted(set(modules))


def mutation(modules: list[str], changed: bool = False, max_children: int | None = None) -> Path:
    """Run mutmut on the selected modules and write the report; returns its path."""
    selected = select(modules, changed)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    if not selected:
        REPORT.write_text("# Mutation testing (mutmut)\n\nNo core module changed.\n")
        return REPORT
    run_mutmut(selected, max_children or int(os.environ.get("MUTATION_MAX_CHILDREN", "0")))
    REPORT.write_text(report([score_module(module) for module in selected]))
    return REPORT
