"""The GitHub workflow: one nox call per job, and no deploy without the commit's tests.

GitHub runs a job whose `if` holds once every job in its `needs` succeeded
(GitHub Actions docs, "Workflow syntax": `jobs.<job_id>.needs` and `jobs.<job_id>.if`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "pipeline.yml"
CI_MODULE = REPO / "terraform" / "modules" / "ci" / "main.tf"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def triggers(workflow: dict) -> dict:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true


def runs(job: dict, event: str) -> bool:
    """Whether the job's `if` admits `event` (the workflow's conditions name only events)."""
    condition = job.get("if")
    if condition is None:
        return True
    allowed = re.findall(r"github\.event_name == '([a-z_]+)'", condition)
    return event in allowed


def nox_calls(job: dict) -> list[str]:
    """The job's nox commands (`exec` left off)."""
    return [
        line.strip().removeprefix("exec ")
        for step in job["steps"]
        for line in step.get("run", "").splitlines()
        if line.strip().removeprefix("exec ").startswith("nox ")
    ]


def test_every_job_is_one_nox_call(workflow):
    for name, job in workflow["jobs"].items():
        assert len(nox_calls(job)) == 1, f"job {name} runs {nox_calls(job)}"


def test_a_push_deploys_only_after_the_tests_of_that_commit_passed(workflow):
    assert set(triggers(workflow)["push"]["branches"]) == {"dev", "prod"}
    jobs = workflow["jobs"]
    deploying = [name for name, job in jobs.items() if "deploy-" in " ".join(nox_calls(job))]
    testing = [name for name, job in jobs.items() if " test" in " ".join(nox_calls(job))]
    assert deploying and testing
    for name in deploying:
        needs = jobs[name].get("needs", [])
        needs = [needs] if isinstance(needs, str) else needs
        assert any(t in needs and runs(jobs[t], "push") for t in testing), (
            f"job {name} deploys on push without needing a job that tests the commit on push"
        )


def test_nothing_lets_a_deploy_past_failed_tests(workflow):
    """`needs` holds a job back only while its `if` has no status function but success():
    `always()`, `failure()` or `cancelled()` run it after a failed `needs`, and a testing job
    or step with `continue-on-error` counts as succeeded when its tests fail (GitHub Actions
    docs, "Expressions": status check functions; "Workflow syntax": continue-on-error)."""
    jobs = workflow["jobs"]
    for name, job in jobs.items():
        deploys = "deploy-" in " ".join(nox_calls(job))
        tests = " test" in " ".join(nox_calls(job))
        if deploys:
            assert not re.search(r"\b(always|failure|cancelled)\(", str(job.get("if", ""))), name
        if deploys or tests:
            assert not job.get("continue-on-error"), name
            assert not any(step.get("continue-on-error") for step in job["steps"]), name


def test_only_the_deploy_job_may_ask_for_an_oidc_token(workflow):
    """`id-token: write` lets a job ask GitHub for the token the deploy role trusts; the
    workflow grants nothing by default (GitHub Actions docs, "Automatic token
    authentication": permissions)."""
    assert workflow["permissions"] == {}
    for name, job in workflow["jobs"].items():
        asks = job.get("permissions", {}).get("id-token") == "write"
        assert asks == ("deploy-" in " ".join(nox_calls(job))), name


def test_the_deploy_checkout_holds_the_history_that_orders_commits(workflow):
    """A deploy refuses a commit older than the running release's, which git can tell only
    from a checkout holding both (actions/checkout fetches one commit by default)."""
    for name, job in workflow["jobs"].items():
        if "deploy-" in " ".join(nox_calls(job)):
            (checkout,) = [s for s in job["steps"] if "actions/checkout" in s.get("uses", "")]
            assert checkout["with"]["fetch-depth"] == 0, name


def test_deploys_of_one_environment_wait_in_turn_and_none_is_cancelled(workflow):
    """By default a concurrency group holds one pending job and cancels it when another
    arrives ("Control the concurrency of workflows and jobs"), so an older commit's deploy
    could cancel the newest's; `queue: max` keeps every one waiting, in order."""
    concurrency = workflow["jobs"]["deploy"]["concurrency"]
    assert concurrency == {
        "group": "deploy-${{ github.ref_name }}",
        "cancel-in-progress": False,
        "queue": "max",
    }


def test_the_deploy_builds_and_pushes_with_the_cli_the_tests_run(workflow):
    """The check job's image tests and end-to-end deploy run podman on the same runner
    image; a deploy on the runner's Docker engine would run code no test ran."""
    (step,) = [s for s in workflow["jobs"]["deploy"]["steps"] if "nox " in s.get("run", "")]
    assert step["env"]["CONTAINER_CLI"] == "podman"


# How a GitHub runner runs a `run` step with no `shell` on Linux: `bash -e {0}` (GitHub
# Actions docs, "Workflow syntax": jobs.<job_id>.steps[*].shell). How it cancels one (a
# cancelled run, or the job's timeout-minutes): SIGINT to that process alone (actions/runner,
# src/Runner.Sdk/ProcessInvoker.cs: `kill(_proc.Id, SIGINT)`), SIGTERM 7.5 s later, the
# process killed 2.5 s after that ("Workflow cancellation reference").
RUNNER_SIGINT_SECONDS = 7.5


def test_a_cancelled_deploy_signals_nox_itself(workflow, tmp_path):
    """The deploy step run as a runner runs it, with `python` installing nothing and `nox`
    a stand-in that reports the signal it gets: cancelled, the step's process must hand
    nox the runner's SIGINT (nox passes it on; a release interrupted after the service
    update then puts the service back, tests/pipeline/test_release.py). A bash waiting on
    nox would pass nothing on, and the release would be killed with the service left on
    a revision it never verified."""
    (step,) = [s for s in workflow["jobs"]["deploy"]["steps"] if "nox " in s.get("run", "")]
    script = tmp_path / "step.sh"
    script.write_text(step["run"])
    bin_dir, got = tmp_path / "bin", tmp_path / "got"
    bin_dir.mkdir()
    (bin_dir / "python").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "nox").write_text(
        f"#!{sys.executable}\n"
        "import os, pathlib, signal, sys, time\n"
        f"got = pathlib.Path({str(got)!r})\n"
        "def stop(signum, frame):\n"
        "    got.write_text(signal.Signals(signum).name)\n"
        "    sys.exit(130)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        "got.write_text(f'started {os.getpid()} {sys.argv[1:]}')\n"
        "time.sleep(60)\n"
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "BRANCH": "dev"}
    step_process = subprocess.Popen(
        ["bash", "-e", str(script)],
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    nox_pid = None
    try:
        deadline = time.monotonic() + 30
        while not (got.exists() and got.read_text().startswith("started")):
            assert time.monotonic() < deadline and step_process.poll() is None, "nox never ran"
            time.sleep(0.05)
        started = got.read_text().split(" ", 2)
        nox_pid = int(started[1])
        assert started[2] == "['-s', 'deploy-dev']"
        os.kill(step_process.pid, signal.SIGINT)
        try:
            step_process.wait(timeout=RUNNER_SIGINT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the step took no notice of SIGINT in {RUNNER_SIGINT_SECONDS} s")
        assert got.read_text() == "SIGINT"
    finally:  # only what this test started, by its PID
        for pid in (step_process.pid, nox_pid):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        step_process.wait(timeout=30)


def test_pull_requests_run_the_tests_and_deploy_nothing(workflow):
    jobs = workflow["jobs"].values()
    assert any(runs(job, "pull_request") and " test" in " ".join(nox_calls(job)) for job in jobs)
    assert not any(
        runs(job, "pull_request") and "deploy-" in " ".join(nox_calls(job)) for job in jobs
    )


def test_mutation_testing_runs_on_the_changed_core_modules_within_the_budget(workflow):
    """The job diffs against the commit before the push, so its checkout holds the whole
    history; its time
    limit lets a commit that changes the capture modules finish (about 40 minutes of
    mutants on 2 cores, README, Tests) and stops a hung one within the hour."""
    (job,) = [job for job in workflow["jobs"].values() if "mutation" in " ".join(nox_calls(job))]
    assert nox_calls(job) == ["nox -s mutation -- --changed"]
    assert 45 <= job["timeout-minutes"] <= 60
    checkout = next(step for step in job["steps"] if "actions/checkout" in step.get("uses", ""))
    assert checkout["with"]["fetch-depth"] == 0


def deploy_role_max_session_seconds() -> int:
    """The deploy role's `max_session_duration` as terraform/modules/ci sets it, or IAM's
    default of one hour when it sets none (IAM API reference, CreateRole:
    MaxSessionDuration)."""
    role = re.search(
        r'^resource "aws_iam_role" "deploy" \{\n(.*?)^\}', CI_MODULE.read_text(), re.M | re.S
    )
    assert role, f"{CI_MODULE} makes no aws_iam_role.deploy"
    setting = re.search(r"^\s*max_session_duration\s*=\s*(.+?)\s*$", role.group(1), re.M)
    if setting is None:
        return 3600
    assert setting.group(1).isdigit(), f"max_session_duration = {setting.group(1)}: not a number"
    return int(setting.group(1))


def test_the_deploy_credentials_outlast_the_deploy_job(workflow):
    """configure-aws-credentials asks STS for a session of role-duration-seconds (one hour
    when unset: the action's README, "Credential Lifetime"), which STS refuses beyond the
    role's maximum session duration (STS API reference, AssumeRoleWithWebIdentity:
    DurationSeconds). GitHub cancels a job after its timeout-minutes (GitHub Actions docs,
    "Workflow syntax"), so credentials that last that long never expire mid-release."""
    credentialed = 0
    for name, job in workflow["jobs"].items():
        for step in job["steps"]:
            if "aws-actions/configure-aws-credentials" not in step.get("uses", ""):
                continue
            credentialed += 1
            seconds = step["with"].get("role-duration-seconds")
            assert seconds is not None, f"job {name} leaves role-duration-seconds to its default"
            assert job["timeout-minutes"] * 60 <= int(seconds), (
                f"job {name} may run {job['timeout-minutes']} min on {seconds} s credentials"
            )
            assert int(seconds) <= deploy_role_max_session_seconds(), (
                f"job {name} asks for {seconds} s, more than the deploy role's "
                f"max_session_duration ({CI_MODULE.relative_to(REPO)})"
            )
    assert credentialed, "no job configures AWS credentials"


# The first release of each action the workflow uses whose action.yml declares
# `runs.using: node24` (read from each action's repository at that tag). GitHub-hosted
# runners run JavaScript actions on Node.js 24 since 2026-06-02 and no longer carry
# Node.js 20 since 2026-09-16 (GitHub changelog, "Deprecation of Node 20 on GitHub
# Actions runners", 2025-09-19): a release built for node20 then runs on a runtime it was
# never released for.
FIRST_NODE24_RELEASE = {
    "actions/checkout": (5, 0, 0),
    "actions/setup-python": (6, 0, 0),
    "hashicorp/setup-terraform": (4, 0, 0),
    "aws-actions/configure-aws-credentials": (6, 0, 0),
}
PINNED_USE = re.compile(
    r"uses:\s*(?P<action>[\w.-]+/[\w.-]+)@(?P<ref>\S+)(?:\s*#\s*v(?P<version>[\d.]+))?"
)


def pinned_actions() -> list[tuple[str, str, str | None]]:
    """(action, ref, release named in the pin's comment) of every `uses:` line."""
    return [
        (m["action"], m["ref"], m["version"])
        for m in map(PINNED_USE.search, WORKFLOW.read_text().splitlines())
        if m is not None
    ]


def test_every_action_is_pinned_to_a_commit_of_a_named_release():
    """A tag can be moved to other code; a commit cannot (GitHub Actions docs, "Security
    hardening for GitHub Actions": pin actions to a full-length commit SHA). The comment
    names the release, so a reader and the runtime check below know what the SHA is."""
    uses = pinned_actions()
    assert uses, "the workflow uses no actions"
    for action, ref, version in uses:
        assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{action}@{ref}: not a full commit SHA"
        assert version, f"{action}@{ref}: no `# vX.Y.Z` comment naming its release"


def test_every_action_runs_on_the_node_runtime_the_runners_carry():
    for action, _ref, version in pinned_actions():
        assert action in FIRST_NODE24_RELEASE, (
            f"{action}: not in FIRST_NODE24_RELEASE; add the first release whose "
            "action.yml declares `runs.using: node24`"
        )
        release = tuple(int(part) for part in version.split("."))
        first = FIRST_NODE24_RELEASE[action]
        assert release >= first, (
            f"{action} v{version} is built for Node.js 20, which the runners no longer "
            f"carry: pin v{'.'.join(map(str, first))} or later"
        )
