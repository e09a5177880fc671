"""The pipeline's commands end every failure in one line and exit 2, never a traceback:
AWS errors with their fix, file system errors with their path; Ctrl-C, SIGTERM and
SIGHUP stop a command with exit 130 after its clean-up ran."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import boto3
import pytest
from botocore.exceptions import ClientError

from pipeline import cli
from pipeline.environment import REQUIRED
from tests.conftest import REPO


@pytest.fixture
def no_credentials(monkeypatch):
    """The dev environment's names given by variables, and no AWS credentials anywhere."""
    for name in REQUIRED:
        monkeypatch.setenv(f"DEV_{name.upper()}", "x")
    monkeypatch.setenv("DEV_AWS_REGION", "us-east-1")
    monkeypatch.setenv("DEV_ENDPOINT_URL", "http://127.0.0.1:9")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it keeps the keys it first read


def test_status_without_credentials_says_which_to_set(no_credentials, capsys):
    assert cli.main(["status", "dev"]) == 2
    assert capsys.readouterr().err == (
        "error: Unable to locate credentials; check the AWS credentials the pipeline runs "
        "with (AWS_PROFILE, AWS_ACCESS_KEY_ID)\n"
    )


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        ("ClusterNotFoundException", "check the environment's cluster_name, service_name"),
        ("AccessDeniedException", "the role lacks a permission this call needs"),
        ("ValidationException", "asking again would get the same answer"),
    ],
)
def test_an_aws_refusal_is_one_line_with_its_fix(no_credentials, monkeypatch, capsys, code, fix):
    def refused(env, **kwargs):
        raise ClientError({"Error": {"Code": code, "Message": "no."}}, "DescribeServices")

    monkeypatch.setattr(cli, "status", refused)
    assert cli.main(["status", "dev"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: An error occurred ({code}) when calling the DescribeServices")
    assert fix in err and err.count("\n") == 1


def test_a_path_that_cannot_be_written_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FIXTURES_DIR", raising=False)
    (tmp_path / "a-file").write_text("")
    cache = tmp_path / "a-file" / "cache"
    assert cli.main(["download", "--cache-dir", str(cache)]) == 2
    assert capsys.readouterr().err == (
        f"error: {cache}: Not a directory: give a path of the right kind (a file or a "
        "directory, as the option asks) that this user may write\n"
    )


@pytest.mark.parametrize(
    ("first", "then"),
    [
        pytest.param(signal.SIGINT, None, id="ctrl-c"),
        pytest.param(signal.SIGTERM, None, id="sigterm"),
        pytest.param(signal.SIGHUP, None, id="sighup"),
        # A GitHub runner cancelling a job: SIGINT, SIGTERM 7.5 s later ("Workflow
        # cancellation reference"), which reaches the command when nox passes it on.
        pytest.param(signal.SIGINT, signal.SIGTERM, id="runner-cancel"),
        pytest.param(signal.SIGINT, signal.SIGINT, id="ctrl-c-twice"),
        pytest.param(signal.SIGTERM, signal.SIGHUP, id="sigterm-then-sighup"),
    ],
)
def test_a_stopped_command_cleans_up_and_exits_130_without_a_traceback(first, then):
    """Run in a process of its own: the signal goes to that process. What the command
    does on its way out (a release pointing the service back, a download removing its
    partial file) runs to its end whatever signal comes next."""
    again = f"os.kill(os.getpid(), {int(then)}); time.sleep(0.2)" if then else "pass"
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from pipeline import cli

        # A shell running this in the background hands SIGINT down ignored (POSIX:
        # asynchronous lists); the Ctrl-C this test sends is the terminal's, not ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)

        def stopped(args):
            'Stops itself, and may be signalled again while it cleans up.'
            try:
                os.kill(os.getpid(), {int(first)})
                time.sleep(10)
            finally:
                {again}
                print("cleaned up")
            return 0

        configure = cli.COMMANDS["download"][1]
        cli.COMMANDS["download"] = (stopped, configure)
        sys.exit(cli.main(["download"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (130, "cleaned up\n"), done.stderr
    assert done.stderr == "interrupted: the command stopped before it finished\n"


@pytest.mark.parametrize("limit", ["0", "-1", "x"])
def test_a_limit_that_is_no_count_is_refused_by_name(limit, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["logs", "local", "--url", str(tmp_path), "--limit", limit])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"python -m pipeline logs: error: argument --limit: {limit} is not a count of 1 or "
        "more; usage: python -m pipeline logs [-h]"
    )
    assert err.count("\n") == 1


def test_the_local_environment_is_not_sent_to_athena(tmp_path, capsys):
    assert cli.main(["report", "local", "--url", str(tmp_path), "--engine", "athena"]) == 2
    assert capsys.readouterr().err == (
        "error: local has no Athena workgroup (only dev, prod, applied with Terraform, do): "
        "leave out --engine athena to compute the report locally\n"
    )
