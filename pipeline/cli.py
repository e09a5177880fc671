"""`python -m pipeline <command>`: the entry point every nox session calls.

Each command is a few lines over a module of its own; failures the user can
fix end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from pipeline import download as download_step
from pipeline import gate as gate_step
from pipeline import image as image_step
from pipeline.reference import REPO, fetch_artifact, load_reference
from service.artifacts import ArtifactError

DEFAULT_LOCAL_CAPTURE = REPO / "predictions"


class PipelineError(Exception):
    """A failure with a message that says what to do; the CLI prints it and exits 2."""


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the reference model locally (the embedded default: no AWS)."""
    reference = load_reference(environ=os.environ)
    model_path = fetch_artifact(reference.model)
    os.environ.update(
        MODEL_URL=str(model_path),
        MODEL_SHA256=reference.model.sha256 or "",
        MODEL_NAME=reference.name,
    )
    os.environ.setdefault("PREDICTION_LOG_URL", str(DEFAULT_LOCAL_CAPTURE))
    from service.__main__ import main as serve

    return serve()


COMMANDS: dict[
    str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]
] = {
    "serve": (cmd_serve, lambda parser: None),
    "download": (download_step.run, download_step.add_arguments),
    "gate": (gate_step.run, gate_step.add_arguments),
    "build": (image_step.run_build, image_step.add_build_arguments),
    "push": (image_step.run_push, image_step.add_push_arguments),
}


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
    except (PipelineError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
