"""`python -m pipeline <command>`: the entry point every nox session calls.

Each command is a few lines over a module of its own; failures the user can
fix end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from pipeline import download as download_step
from pipeline import gate as gate_step
from pipeline import image as image_step
from pipeline import predictions
from pipeline.datasets import DatasetError
from pipeline.deploy import DeployError, deploy, gate
from pipeline.environment import ENVIRONMENTS, Environment, MissingEnvironment, resolve
from pipeline.image import ImageError
from pipeline.records import RecordError
from pipeline.reference import REPO, InvalidReference, fetch_artifact, load_reference
from pipeline.release import ReleaseError, format_status, rollback, status
from pipeline.terraform import TerraformError
from service.artifacts import ArtifactError

DEFAULT_LOCAL_CAPTURE = REPO / "predictions"


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the reference model locally (the embedded default: no AWS)."""
    reference = load_reference(environ=os.environ)
    model_path = fetch_artifact(reference.model)
    os.environ.update(
        MODEL_URL=str(model_path),
        MODEL_SHA256=reference.model.sha256 or "",
        MODEL_NAME=reference.name,
        MODEL_LABELS=json.dumps(list(reference.labels)) if reference.labels else "",
    )
    os.environ.setdefault("PREDICTION_LOG_URL", str(DEFAULT_LOCAL_CAPTURE))
    from service.__main__ import main as serve

    return serve()


def _environment(args: argparse.Namespace) -> Environment:
    return resolve(args.environment)


def _add_environment(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("environment", choices=ENVIRONMENTS)


def cmd_deploy(args: argparse.Namespace) -> int:
    """Download, gate, build or promote, push and release to an environment."""
    record = deploy(args.environment)
    print(f"released {record['release_id']} to {args.environment}: {record['image']}")
    return 0


def cmd_deploy_local(args: argparse.Namespace) -> int:
    """Gate the referenced model, then serve it locally with capture to a local directory."""
    gated = gate(None, None)
    if gated.batched is not None:
        os.environ.update(
            MODEL_BATCHED_URL=str(gated.batched.path), MODEL_BATCHED_SHA256=gated.batched.sha256
        )
    return cmd_serve(args)


def cmd_rollback(args: argparse.Namespace) -> int:
    """Return an environment to its previous successful release."""
    record = rollback(_environment(args))
    print(f"{args.environment} is back on {record['restores']} ({record['image']})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show what runs in an environment: release, image, model, gate accuracy, health."""
    print(format_status(status(_environment(args))))
    return 0


COMMANDS: dict[
    str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]
] = {
    "serve": (cmd_serve, lambda parser: None),
    "download": (download_step.run, download_step.add_arguments),
    "gate": (gate_step.run, gate_step.add_arguments),
    "build": (image_step.run_build, image_step.add_build_arguments),
    "push": (image_step.run_push, image_step.add_push_arguments),
    "deploy": (cmd_deploy, _add_environment),
    "deploy-local": (cmd_deploy_local, lambda parser: None),
    "rollback": (cmd_rollback, _add_environment),
    "status": (cmd_status, _add_environment),
    "logs": (predictions.run_logs, predictions.add_logs_arguments),
    "report": (predictions.run_report, predictions.add_report_arguments),
}


# Failures with a message that says what to do: printed as one line, exit status 2.
FAILURES: tuple[type[Exception], ...] = (
    ArtifactError,
    DatasetError,
    DeployError,
    ImageError,
    InvalidReference,
    MissingEnvironment,
    RecordError,
    ReleaseError,
    TerraformError,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (function, configure) in COMMANDS.items():
        sub = commands.add_parser(name, help=(function.__doc__ or "").strip().splitlines()[0])
        configure(sub)
        sub.set_defaults(run=function)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except FAILURES as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
