"""`python -m pipeline <command>`: the one entry point of every step; nox sessions call it.

Each command is a few lines over a module of its own. Steps raise; `main` is the
one place that turns their errors into one line on stderr, `error: <what is wrong
and what to do>`, and exit status 2 (as `service.app` turns errors into HTTP).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import REPO, interrupts, provider_mirror, terraform
from pipeline import image as images
from pipeline import registry as registries
from pipeline.batchable import BatchableCopy
from pipeline.datasets import DatasetError
from pipeline.deploy import DeployError, batched_copy, deploy, served_copy
from pipeline.download import download
from pipeline.environment import (
    ENVIRONMENTS,
    MissingEnvironment,
    output,
    regional_client,
    resolve,
)
from pipeline.gating import (
    DEFAULT_REPORT_DIR,
    DEPLOYMENTS_URL_ENV,
    GateFailed,
    NoDeploymentRecords,
    gate_model,
)
from pipeline.image import ImageError
from pipeline.mutation import MutationError, mutation
from pipeline.predictions import athena, chart, engine, statistics
from pipeline.predictions import compact as compaction
from pipeline.predictions import store as parts
from pipeline.predictions.store import PredictionLogError
from pipeline.records import RecordError
from pipeline.reference import (
    DEFAULT_REFERENCE,
    InvalidReference,
    Reference,
    fetch_artifact,
    load_reference,
)
from pipeline.release import ReleaseError, format_status, rollback, status
from pipeline.terraform import TerraformError
from service import aws
from service.__main__ import serve
from service.artifacts import ArtifactError
from service.config import DEFAULT_APP_ENV, ConfigError, Settings
from service.errors import ModelLoadError
from service.store import StoreError

DEFAULT_LOCAL_CAPTURE = REPO / "predictions"
DEFAULT_CHART_DIR = Path("reports")
TERRAFORM_COMMANDS = ("plan", "apply", "output", "lint", "mirror")

Command = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], None]


# -- serve -------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the reference model locally (the embedded default: no AWS), as a deploy
    serves it: with the batch-capable copy a deploy ships beside a batch-1 model."""
    reference = load_reference(environ=os.environ)
    return _serve(reference, _batched_variables(served_copy(reference)))


def cmd_deploy_local(args: argparse.Namespace) -> int:
    """Gate the referenced model, then serve it locally with capture to a local directory."""
    reference = load_reference(environ=os.environ)
    gated = gate_model(reference)
    return _serve(reference, _batched_variables(batched_copy(gated)))


def _batched_variables(batched: BatchableCopy | None) -> dict[str, str]:
    """MODEL_BATCHED_URL and MODEL_BATCHED_SHA256 for `batched`, as a release sets them."""
    if batched is None:
        return {}
    return {"MODEL_BATCHED_URL": str(batched.path), "MODEL_BATCHED_SHA256": batched.sha256}


def _serve(reference: Reference, extra: dict[str, str] | None = None) -> int:
    """The service's settings from this environment, with the reference's model in it and
    capture to ./predictions unless PREDICTION_LOG_URL says otherwise."""
    model_path = fetch_artifact(reference.model)
    environ = {
        "PREDICTION_LOG_URL": str(DEFAULT_LOCAL_CAPTURE),
        **os.environ,
        "MODEL_URL": str(model_path),
        "MODEL_SHA256": reference.model.sha256 or "",
        "MODEL_NAME": reference.name,
        "MODEL_LABELS": json.dumps(list(reference.labels)) if reference.labels else "",
        **(extra or {}),
    }
    return serve(Settings.from_env(environ))


# -- download and gate --------------------------------------------------------------


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--cache-dir", type=Path, default=None)


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch the model and test data by reference, verifying every sha256."""
    reference = load_reference(args.reference, environ=os.environ)
    downloaded = download(reference, args.cache_dir)
    for role, artifact, path in (
        ("model", reference.model, downloaded.model_path),
        ("test_images", reference.test_images, downloaded.images_path),
        ("test_labels", reference.test_labels, downloaded.labels_path),
    ):
        pinned = "" if artifact.sha256 else "  (not pinned: no sha256 given)"
        print(f"{role:<12} {downloaded.sha256s[role]}  {path}{pinned}")
    return 0


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "environment",
        nargs="?",
        choices=ENVIRONMENTS,
        help="compare with the model deployed there (omit: no champion)",
    )
    parser.add_argument(
        "--deployments-url",
        default=os.environ.get(DEPLOYMENTS_URL_ENV),
        help=f"where deployment records live, e.g. s3://bucket/deployments "
        f"(default: ${DEPLOYMENTS_URL_ENV})",
    )
    add_download_arguments(parser)
    parser.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR)


def cmd_gate(args: argparse.Namespace) -> int:
    """Gate the referenced model on the whole test set (an environment: against its champion)."""
    gate_model(
        load_reference(args.reference, environ=os.environ),
        environment=args.environment,
        deployments_url=args.deployments_url,
        report_dir=args.report_dir,
        cache_dir=args.cache_dir,
    )
    return 0


# -- the image ------------------------------------------------------------------------


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tag-repo",
        default=images.DEFAULT_TAG_REPO,
        help="local image name; the tag is the git sha",
    )
    parser.add_argument(
        "--base-image",
        default=os.environ.get("BASE_IMAGE", images.DEFAULT_BASE_IMAGE),
        help=f"the Dockerfile's BASE_IMAGE (default: $BASE_IMAGE or {images.DEFAULT_BASE_IMAGE})",
    )
    parser.add_argument(
        "--ca-bundle",
        type=Path,
        default=None,
        help="CA bundle pip trusts in the build (default: PIP_CERT, SSL_CERT_FILE "
        "or the system bundle)",
    )


def cmd_build(args: argparse.Namespace) -> int:
    """Build the service image, tagged with the git commit sha."""
    model_sha256 = load_reference(environ=os.environ).model.sha256
    if model_sha256 is None:
        raise ImageError("the model reference has no sha256: pin the model in model.toml")
    sha = images.git_sha()
    changed = images.changed_build_inputs()
    if changed:
        images.say(
            f"warning: uncommitted changes go into an image tagged {sha[:12]}: "
            + ", ".join(changed)
        )
    image = images.build(
        args.tag_repo,
        sha,
        model_sha256,
        args.base_image,
        ca_bundle=args.ca_bundle or images.default_ca_bundle(),
        source_url=images.source_url(),
    )
    print(image)
    return 0


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "environment",
        choices=ENVIRONMENTS,
        help="the environment whose ECR repository receives the image",
    )
    parser.add_argument(
        "--repository-url",
        default=None,
        help="ECR repository URL (default: $<ENV>_ECR_REPOSITORY_URL, else the terraform output)",
    )
    parser.add_argument("--tag-repo", default=images.DEFAULT_TAG_REPO)


def cmd_push(args: argparse.Namespace) -> int:
    """Push the image built for this commit to the environment's ECR repository."""
    repository_url = args.repository_url or output(args.environment, "ecr_repository_url")
    region = output(args.environment, "aws_region")
    sha = images.git_sha()
    ecr = registries.Ecr(regional_client("ecr", region))
    digest = registries.push(f"{args.tag_repo}:{sha}", repository_url, sha, ecr=ecr)
    registry, name = registries.split_repository_url(repository_url)
    print(f"{registry}/{name}@{digest}")
    return 0


# -- infrastructure and environments -------------------------------------------------


def add_terraform_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=TERRAFORM_COMMANDS)
    # Not argparse choices: terraform.env_root names the valid environments and the fix.
    parser.add_argument("environment", nargs="?", help=f"one of {', '.join(ENVIRONMENTS)}")


def cmd_terraform(args: argparse.Namespace) -> int:
    """Terraform: `plan|apply|output <environment>` against its S3 state, `lint`, `mirror`.

    `mirror` makes one unpacked copy of the providers every init links and prints the path
    of its CLI configuration, for TF_CLI_CONFIG_FILE (pipeline/provider_mirror.py)."""
    if args.action == "mirror":
        print(provider_mirror.prepare())
        return 0
    if args.action == "lint":
        for root in terraform.lint():
            print(f"valid: {root.relative_to(terraform.TERRAFORM_DIR.parent)}")
        return 0
    if args.environment is None:
        raise TerraformError(
            f"terraform {args.action} needs an environment: "
            f"python -m pipeline terraform {args.action} <{'|'.join(ENVIRONMENTS)}>"
        )
    env = args.environment
    terraform.env_root(env)
    terraform.init_env(env)
    if args.action == "output":
        print(json.dumps(terraform.outputs(env), indent=2, sort_keys=True))
        return 0
    result = terraform.plan(env)
    print(result.output)
    if args.action == "apply":
        if result.changes:
            print(terraform.apply(env, plan_file=result.plan_file))
        else:
            print(f"{env}: no changes, nothing to apply")
    return 0


def _add_environment(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("environment", choices=ENVIRONMENTS)


def cmd_deploy(args: argparse.Namespace) -> int:
    """Download, gate, build or promote, push and release to an environment."""
    record = deploy(args.environment)
    print(f"released {record['release_id']} to {args.environment}: {record['image']}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Return an environment to its previous successful release."""
    record = rollback(resolve(args.environment))
    print(f"{args.environment} is back on {record['restores']} ({record['image']})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show what runs in an environment: release, image, model, gate accuracy, health."""
    print(format_status(status(resolve(args.environment))))
    return 0


# -- predictions -----------------------------------------------------------------------


def _add_capture_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "environment", choices=(DEFAULT_APP_ENV, *ENVIRONMENTS), help="whose predictions"
    )
    parser.add_argument(
        "--url",
        help=f"where the service captures predictions: s3://bucket/prefix or a directory "
        f"(default: ${parts.URL_ENV}, else an environment's capture_url output "
        f"(<ENV>_CAPTURE_URL), else {DEFAULT_LOCAL_CAPTURE})",
    )
    parser.add_argument(
        "--since", help="only predictions since then: 30m, 2h, 1d or an ISO date/time (UTC)"
    )


def _capture_store(args: argparse.Namespace) -> parts.PartStore:
    """The store the command reads: `--url`, else $PREDICTION_LOG_URL, else for an
    environment its capture root (the `capture_url` output, or `<ENV>_CAPTURE_URL`), else
    the local capture of `nox -s serve`. An empty `--url` stays empty, so it is refused."""
    url = args.url
    if url is None:
        url = os.environ.get(parts.URL_ENV) or str(DEFAULT_LOCAL_CAPTURE)
        if args.environment in ENVIRONMENTS and not os.environ.get(parts.URL_ENV):
            try:
                url = output(args.environment, "capture_url")
            except MissingEnvironment as exc:
                raise PredictionLogError(f"{exc}, or pass --url") from None
    return parts.open_store(url)


def add_logs_arguments(parser: argparse.ArgumentParser) -> None:
    _add_capture_arguments(parser)
    parser.add_argument(
        "--limit", type=_at_least_one, help="print at most this many records (1 or more)"
    )
    parser.add_argument("--inputs", action="store_true", help="include captured inputs")


def _at_least_one(raw: str) -> int:
    """A count of 1 or more; argparse words the ArgumentTypeError as its usage error."""
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw} is not a count of 1 or more")
    return value


def cmd_logs(args: argparse.Namespace) -> int:
    """Print an environment's predictions, one JSON object per line, newest first."""
    store = _capture_store(args)
    since = parts.parse_since(args.since) if args.since is not None else None
    try:
        printed = parts.logs(
            store, args.environment, since=since, limit=args.limit, inputs=args.inputs
        )
    except BrokenPipeError:  # `| head`
        return 0
    if not printed:
        print(f"no predictions for {args.environment} under {store.url}", file=sys.stderr)
    return 0


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    _add_capture_arguments(parser)
    parser.add_argument(
        "--chart", type=Path, help="the PNG to write (default: reports/predictions-<env>.png)"
    )
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the comparison with the test set's labels (no download)",
    )
    parser.add_argument(
        "--engine",
        choices=("local", "athena"),
        default="local",
        help="local: download the objects and compute with DuckDB (default); athena: query "
        "the environment's Glue table in its Athena workgroup (Terraform outputs "
        "athena_workgroup and glue_database, or <ENV>_ATHENA_WORKGROUP / <ENV>_GLUE_DATABASE)",
    )


def cmd_report(args: argparse.Namespace) -> int:
    """Summarise an environment's predictions: classes, hours, latency, drift; table + PNG."""
    since = parts.parse_since(args.since) if args.since is not None else None
    if args.engine == "athena" and args.environment not in ENVIRONMENTS:
        raise PredictionLogError(
            f"{args.environment} has no Athena workgroup (only {', '.join(ENVIRONMENTS)}, "
            "applied with Terraform, do): leave out --engine athena to compute the report "
            "locally"
        )
    if args.engine == "athena":
        where = output(args.environment, "athena_workgroup")
        # The workgroup and the Glue table are regional: the environment's region, never
        # the ambient one.
        client = regional_client("athena", output(args.environment, "aws_region"))
        aggregates = athena.aggregate(
            client, where, output(args.environment, "glue_database"), since
        )
    else:
        store = _capture_store(args)
        where = store.url
        aggregates = engine.aggregate_store(store, args.environment, since)
    baseline = None if args.no_baseline else statistics.test_set_labels()
    summary = statistics.summary(
        aggregates,
        args.environment,
        baseline,
        None if args.no_baseline else statistics.test_set_input_means,
    )
    if not summary.total:
        raise PredictionLogError(
            f"nothing to report: no predictions for {args.environment} in {where}"
            + (f" since {args.since}" if args.since else "")
            + f"; check --url / {parts.URL_ENV}"
        )
    print(statistics.format_table(summary))
    png = chart.plot(
        summary, args.chart or DEFAULT_CHART_DIR / f"predictions-{args.environment}.png"
    )
    print(f"\nchart: {png}")
    return 0


def add_compact_arguments(parser: argparse.ArgumentParser) -> None:
    _add_capture_arguments(parser)
    parser.add_argument(
        "--hour",
        help="compact this UTC hour only, e.g. 2025-03-01T12 (default: every "
        "finished hour since --since)",
    )


def cmd_compact(args: argparse.Namespace) -> int:
    """Merge each finished hour's capture parts into a few large objects, exactly once."""
    store = _capture_store(args)
    since = parts.parse_since(args.since) if args.since is not None else None
    hour = compaction.parse_hour(args.hour) if args.hour is not None else None
    done = compaction.compact(store, args.environment, since=since, hour=hour)
    print("\n".join(compaction.report(done, args.environment, store.url)))
    return 0


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    return None


# -- mutation testing ---------------------------------------------------------------


def add_mutation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("modules", nargs="*", help="core modules to mutate (default: all)")
    parser.add_argument(
        "--changed",
        action="store_true",
        help="only the core modules changed: by the push or pull request in GitHub Actions, "
        "else since HEAD~1",
    )
    parser.add_argument("--max-children", type=int, default=None, help="parallel test runs")


def cmd_mutation(args: argparse.Namespace) -> int:
    """Mutation-test the core modules with mutmut; report in build/mutation/report.md."""
    path = mutation(args.modules, changed=args.changed, max_children=args.max_children)
    print(path.read_text(), end="")
    print(f"report: {path.relative_to(REPO)}")
    return 0


COMMANDS: dict[str, tuple[Command, Arguments]] = {
    "serve": (cmd_serve, _no_arguments),
    "download": (cmd_download, add_download_arguments),
    "gate": (cmd_gate, add_gate_arguments),
    "build": (cmd_build, add_build_arguments),
    "push": (cmd_push, add_push_arguments),
    "terraform": (cmd_terraform, add_terraform_arguments),
    "deploy": (cmd_deploy, _add_environment),
    "deploy-local": (cmd_deploy_local, _no_arguments),
    "rollback": (cmd_rollback, _add_environment),
    "status": (cmd_status, _add_environment),
    "logs": (cmd_logs, add_logs_arguments),
    "report": (cmd_report, add_report_arguments),
    "compact": (cmd_compact, add_compact_arguments),
    "mutation": (cmd_mutation, add_mutation_arguments),
}


# Failures with a message that says what to do: printed as one line, exit status 2.
FAILURES: tuple[type[Exception], ...] = (
    ArtifactError,
    ConfigError,
    DatasetError,
    DeployError,
    GateFailed,
    ImageError,
    InvalidReference,
    MissingEnvironment,
    ModelLoadError,
    MutationError,
    NoDeploymentRecords,
    PredictionLogError,
    RecordError,
    ReleaseError,
    StoreError,
    TerraformError,
)


class OneLineParser(argparse.ArgumentParser):
    """argparse, whose usage errors are one line like every other failure: the problem,
    then the command's usage (`--help` says more), exit status 2."""

    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split())
        self.exit(2, f"{self.prog}: error: {message}; {usage}\n")


def parser() -> argparse.ArgumentParser:
    top = OneLineParser(prog="python -m pipeline", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    for name, (function, configure) in COMMANDS.items():
        sub = commands.add_parser(name, help=(function.__doc__ or "").strip().splitlines()[0])
        configure(sub)
        sub.set_defaults(run=function)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a failure is one line on stderr and exit status 2, an interrupt
    (Ctrl-C) exit status 130 without a traceback.

    The domain errors (FAILURES) say what to do themselves; an AWS error no retry changed
    is named with its fix (`service.aws.explain`); a file system error names the path. A
    SIGTERM or SIGHUP ends the command as Ctrl-C does, so what it was writing (a download's
    temporary file) is removed on the way out, and an interrupted release puts the service
    back (`pipeline.release.release`); signals after the first are ignored, so that
    clean-up is not itself cut short (`pipeline.interrupts`)."""
    args = parser().parse_args(argv)
    try:
        with interrupts.handled():
            return args.run(args)
    except FAILURES as exc:
        return _failed(str(exc))
    except (BotoCoreError, ClientError) as exc:
        return _failed(aws.explain(exc))
    except OSError as exc:
        return _failed(_os_failure(exc))
    except KeyboardInterrupt:
        print("interrupted: the command stopped before it finished", file=sys.stderr)
        return 130


def _failed(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _os_failure(exc: OSError) -> str:
    """A file system error as a line naming the path and what to check."""
    if exc.filename is None:
        return str(exc)
    return (
        f"{exc.filename}: {exc.strerror or exc}: give a path of the right kind (a file or a "
        "directory, as the option asks) that this user may write"
    )
