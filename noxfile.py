"""Every step of the project, as nox sessions: `nox -l` lists them.

The logic lives in `pipeline/` and `service/`; sessions only wire it to the
command line. Sessions that touch AWS or serve are not in the default set.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "test"]
nox.options.error_on_external_run = True

# How nox stops the command a session runs once nox is interrupted: it waits
# `interrupt_timeout`, sends the command SIGTERM, waits `terminate_timeout`, then SIGKILL
# (nox's `Session.run`). Its defaults, 0.3 s and 0.2 s, cut short what a command does on
# the way out: the service drains its requests and flushes its capture (within its own
# STOP_TIMEOUT_SECONDS, `service.shutdown`), the tests and the bench stop the servers they
# started, a download removes its temporary file. So a command that got the terminal's
# Ctrl+C too has INTERRUPT_SECONDS before nox passes it a SIGTERM, and is never killed:
# every command here bounds its own stop.
INTERRUPT_SECONDS = 5.0
STOP = {"interrupt_timeout": INTERRUPT_SECONDS, "terminate_timeout": None}
# A command that changes a live service (a deploy's release, a rollback) takes the first
# signal itself, puts the service back or records what it did, and ignores later signals
# (pipeline/interrupts.py); a GitHub runner cancelling the job signals nox alone and kills
# the step 10 s later ("Workflow cancellation reference"), so nox passes it on at once.
RELEASE_STOP = {**STOP, "interrupt_timeout": 0.0}


_stopping = False


def _interrupted(signum: int, frame: object) -> None:
    """The first signal interrupts nox, which then stops its command as STOP says; later
    ones are ignored, so a repeated `kill` cannot end nox in the middle of that stop and
    leave the command running. (A terminal's second Ctrl+C reaches the command too: uvicorn
    then exits at once, and nox with it.)"""
    global _stopping
    if not _stopping:
        _stopping = True
        raise KeyboardInterrupt


# SIGTERM or SIGHUP to nox alone (`kill`, `timeout`, a supervisor) would end nox at once and
# leave its command running (`nox -s serve` holding its port); as an interrupt, nox stops
# the command first, as above (signal(7): both end a process by default). SIGINT is taken
# only where Python's own handler has it (a background job started by a script ignores it).
for _signal in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_signal, _interrupted)
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted)

ROOT = Path(__file__).parent
PYTHON = "3.11"
# The environments: one Terraform root each (pipeline.environment reads the same directory).
ENVIRONMENTS = sorted(p.parent.name for p in (ROOT / "terraform" / "envs").glob("*/main.tf"))
CHOICES = "|".join(ENVIRONMENTS)


def install(session: nox.Session, *groups: str, project: bool = True) -> None:
    """The dependency groups named and, with `project`, the project (editable) and the
    service's runtime dependencies, at the versions uv.lock pins (`uv sync --locked`: a
    pyproject.toml changed without `uv lock` stops the session with uv's message). The
    sync is exact: the session's venv holds nothing else."""
    option = "--group" if project else "--only-group"
    selection = [f"{option}={group}" for group in groups]
    session.run_install(
        "uv", "sync", "--locked", "--no-default-groups", *selection,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        external=True,
        silent=True,  # uv's output only on failure: a session's stdout is its command's
        **STOP,
    )  # fmt: skip


def run(session: nox.Session, *command: str, **options: Any) -> Any:
    """`session.run(*command, **options)`, stopped as STOP says when nox is interrupted
    (or as `options`' own interrupt_timeout says)."""
    return session.run(*command, **{**STOP, **options})


# pytest-xdist: a worker a core (at most four: each starts its own moto server and
# services), a test file at a time, podman's files together, the heaviest first
# (tests/workers.py); `-- -n 0` runs the tests in this process.
PARALLEL = (
    "--numprocesses", "auto", "--maxprocesses", "4",
    "--dist", "loadfile", "--no-loadscope-reorder",
)  # fmt: skip


def run_tests(session: nox.Session, *marker: str, terraform: bool = True) -> None:
    """pytest over the tests `marker` selects, once the model and MNIST files are here.

    The tests never download (sockets reach 127.0.0.1 only): `python -m pipeline download`
    fetches and caches the files model.toml pins first (from FIXTURES_DIR when set).
    """
    install(session, "test")
    if terraform:
        use_provider_mirror(session)
    run(session, "python", "-m", "pipeline", "download")
    run(session, "pytest", *PARALLEL, *marker, *session.posargs)


def use_provider_mirror(session: nox.Session) -> None:
    """In CI, every `terraform init` of the session links one copy of the providers
    (`python -m pipeline terraform mirror`: 675 MB once, not per root), unless
    TF_CLI_CONFIG_FILE names a configuration already."""
    if os.environ.get("CI", "").lower() == "true" and not os.environ.get("TF_CLI_CONFIG_FILE"):
        config = run(session, "python", "-m", "pipeline", "terraform", "mirror", silent=True)
        session.env["TF_CLI_CONFIG_FILE"] = str(config).strip().splitlines()[-1]


def prepare_machine(session: nox.Session) -> None:
    """In CI every integration test must run, so the machine gets what they need first
    (wrk, podman, the local base image, the loopback registry); a workstation is left as
    it is."""
    if os.environ.get("CI", "").lower() == "true":
        run(session, str(ROOT / ".ci" / "setup.sh"), external=True)


@nox.session(python=PYTHON)
def test(session: nox.Session) -> None:
    """Run every test, unit and integration (pass pytest options after --)."""
    prepare_machine(session)
    run_tests(session)


@nox.session(python=PYTHON)
def unit(session: nox.Session) -> None:
    """Run the in-process tests only: no server, registry, podman or Terraform (1 to 1.5 min)."""
    run_tests(session, "-m", "not integration", terraform=False)


@nox.session(python=PYTHON)
def integration(session: nox.Session) -> None:
    """Run the integration tests: real processes on 127.0.0.1 (moto, uvicorn, podman, Terraform)."""
    prepare_machine(session)
    run_tests(session, "-m", "integration")


@nox.session(python=PYTHON)
def mutation(session: nox.Session) -> None:
    """Mutation-test the core modules with mutmut; report in build/mutation/report.md
    (`-- --changed`: only the core modules changed, by the push or pull request in GitHub Actions,
    else since HEAD~1; `-- service/codec.py`: those)."""
    install(session, "mutation")
    run(session, "python", "-m", "pipeline", "download")
    run(session, "python", "-m", "pipeline", "mutation", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Lint Python, the Dockerfile and the GitHub workflow."""
    install(session, "lint", "terraform")
    run(session, "ruff", "check", ".")
    run(session, "ruff", "format", "--check", ".")
    run(session, "hadolint", "Dockerfile")
    workflows = [str(p) for p in sorted((ROOT / ".github" / "workflows").glob("*.yml"))]
    run(session, "check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows)
    run(session, "zizmor", "--offline", *workflows)
    lint_terraform(session)


def lint_terraform(session: nox.Session) -> None:
    """terraform fmt -check and validate of every root and module; checkov in its own venv."""
    use_provider_mirror(session)
    run(session, "python", "-m", "pipeline", "terraform", "lint")
    session.notify("checkov")


@nox.session(python=PYTHON)
def checkov(session: nox.Session) -> None:
    """Scan terraform/ with checkov (its own venv: its pins clash with ours)."""
    install(session, "checkov", project=False)
    run(
        session,
        "checkov",
        "-d",
        "terraform",
        "--framework",
        "terraform",
        "--skip-download",
        "--quiet",
        "--compact",
    )


def terraform_command(session: nox.Session, command: str) -> None:
    """`python -m pipeline terraform <command> <env>` for the one environment in posargs."""
    if len(session.posargs) != 1 or session.posargs[0] not in ENVIRONMENTS:
        session.error(f"usage: nox -s {command} -- {CHOICES}")
    install(session, "terraform")
    run(session, "python", "-m", "pipeline", "terraform", command, session.posargs[0])


@nox.session(python=PYTHON)
def plan(session: nox.Session) -> None:
    """Plan an environment's infrastructure: `-- <environment>` (needs TF_STATE_BUCKET)."""
    terraform_command(session, "plan")


@nox.session(python=PYTHON)
def apply(session: nox.Session) -> None:
    """Plan, then apply that plan to an environment: `-- <environment>`."""
    terraform_command(session, "apply")


def pipeline_command(session: nox.Session, *command: str, stop: dict = STOP) -> None:
    """Install the pipeline's environment and run one `python -m pipeline` command,
    stopped as `stop` says."""
    install(session, "pipeline")
    run(session, "python", "-m", "pipeline", *command, *session.posargs, **stop)


@nox.session(python=PYTHON)
def serve(session: nox.Session) -> None:
    """Serve the reference model on http://127.0.0.1:8080, capturing predictions locally."""
    pipeline_command(session, "serve")


@nox.session(python=PYTHON)
def download(session: nox.Session) -> None:
    """Fetch the model and test data by reference, verifying every sha256."""
    pipeline_command(session, "download")


@nox.session(python=PYTHON)
def gate(session: nox.Session) -> None:
    """Gate the model on the whole test set (`-- <environment>`: against its champion)."""
    pipeline_command(session, "gate")


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Build the service image tagged with the git commit sha ($BASE_IMAGE picks the base)."""
    pipeline_command(session, "build")


@nox.session(python=PYTHON)
def push(session: nox.Session) -> None:
    """Push this commit's image to an environment's ECR repository: `-- <environment>`."""
    if not session.posargs:
        session.error(f"usage: nox -s push -- {CHOICES}")
    pipeline_command(session, "push")


def deploy_session(environment: str) -> None:
    """`nox -s deploy-<environment>`: one session per Terraform root (deploy-dev, deploy-prod)."""

    def deploy(session: nox.Session) -> None:
        pipeline_command(session, "deploy", environment, stop=RELEASE_STOP)

    deploy.__doc__ = (
        f"Gate, ship (build, or promote what its source verified) and release to {environment}."
    )
    nox.session(name=f"deploy-{environment}", python=PYTHON)(deploy)


for _environment in ENVIRONMENTS:
    deploy_session(_environment)


@nox.session(name="deploy-local", python=PYTHON)
def deploy_local(session: nox.Session) -> None:
    """Gate, then serve locally with capture to ./predictions (no AWS)."""
    pipeline_command(session, "deploy-local")


@nox.session(python=PYTHON)
def rollback(session: nox.Session) -> None:
    """Return an environment to its previous successful release: `-- <environment>`."""
    pipeline_command(session, "rollback", stop=RELEASE_STOP)


@nox.session(python=PYTHON)
def status(session: nox.Session) -> None:
    """Show what runs in an environment: `-- <environment>`."""
    pipeline_command(session, "status")


@nox.session(python=PYTHON)
def logs(session: nox.Session) -> None:
    """Print an environment's predictions, newest first: `-- <env> [--since 2h]`."""
    if not session.posargs:
        session.error(f"usage: nox -s logs -- <local|{CHOICES}> [--since 2h] [--url s3://...]")
    pipeline_command(session, "logs")


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    """Summarise an environment's predictions (classes, hours, latency, drift): `-- <env>`."""
    if not session.posargs:
        session.error(f"usage: nox -s report -- <local|{CHOICES}> [--since 1d] [--url s3://...]")
    pipeline_command(session, "report")


@nox.session(python=PYTHON)
def compact(session: nox.Session) -> None:
    """Merge each finished hour's capture parts into a few objects: `-- <env> [--hour ...]`."""
    if not session.posargs:
        session.error(
            f"usage: nox -s compact -- <local|{CHOICES}> [--hour 2025-03-01T12] [--since 2d] "
            "[--url s3://...]"
        )
    pipeline_command(session, "compact")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmark the service against its ceilings and FastAPI (`-- --quick`: about 7 min)."""
    if shutil.which("wrk") is None:
        session.error("wrk is not installed: run `sudo apt-get install wrk`, then try again")
    install(session, "bench")
    run(session, "python", "-m", "bench", *session.posargs)
