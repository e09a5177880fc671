"""The deploys: `nox -s deploy-dev`, `nox -s deploy-prod`, `nox -s deploy-local`.

deploy-dev:  download -> gate (against dev's champion) -> build -> push -> release
deploy-prod: download -> gate (against prod's champion) -> promote the image dev verified
             for this code and model (pipeline.promotion) -> release
Whether an environment builds or promotes, and from whom, is its Terraform output
`promote_from_environments` (prod: ["dev"]). A gate failure stops before anything in
AWS is written. After every successful release the image is also tagged
`verified-<git tree>-<model sha256>`: that tag is what a promoting environment ships.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from botocore.exceptions import ClientError

from pipeline import REPO, aws_calls, history, promotion, records
from pipeline import image as images
from pipeline import registry as registries
from pipeline.batchable import BatchableCopy, NotBatchable, batchable_copy
from pipeline.datasets import load_dataset
from pipeline.download import download
from pipeline.environment import Environment, override_name, resolve, terraform_outputs
from pipeline.gate import model_inputs
from pipeline.gating import DEFAULT_REPORT_DIR, Gated, gate_model
from pipeline.reference import Reference, load_reference
from pipeline.release import Candidate, SmokeImages, refuse_paused, release
from service.model import ModelInfo, OnnxModel
from service.store import NotAStore, S3Store, StoreError, StoreUnreachable, open_store

SMOKE_IMAGES = 8


class DeployError(Exception):
    """A deploy step failed; the message says which and why."""


def say(message: str) -> None:
    print(f"deploy: {message}", file=sys.stderr, flush=True)


def batched_copy(gated: Gated, directory: Path = DEFAULT_REPORT_DIR) -> BatchableCopy | None:
    """For a batch-1 model: a batch-capable copy, proven equal on the whole test set."""
    if not gated.model.batch_fixed_at_one:
        return None
    return _proven_copy(gated.reference, gated.downloaded.model_path, gated.inputs, directory)


def served_copy(reference: Reference, directory: Path = DEFAULT_REPORT_DIR) -> BatchableCopy | None:
    """The batch-capable copy a deploy of `reference` ships beside the model, without the
    gate (`nox -s serve`): None when the model takes batches itself, or cannot be copied.

    Made and proven on the whole test set as `batched_copy` makes it for a deploy, so a
    local server runs batches as a deployed task runs them. Raises what
    `pipeline.download.download` and `pipeline.datasets.load_dataset` raise.
    """
    downloaded = download(reference)
    model = OnnxModel(downloaded.model_path, ModelInfo(reference.name, "local", "-"))
    if not model.batch_fixed_at_one:
        return None
    dataset = load_dataset(downloaded.images_path, downloaded.labels_path, reference.test_format)
    inputs = model_inputs(model, dataset, reference.input_scale)
    return _proven_copy(reference, downloaded.model_path, inputs, directory)


def _proven_copy(
    reference: Reference, model_path: Path, inputs: np.ndarray, directory: Path
) -> BatchableCopy | None:
    target = directory / f"{reference.name}.batched.onnx"
    try:
        copy = batchable_copy(model_path, inputs, target)
    except NotBatchable as exc:
        say(f"no batch-capable copy ({exc}); batches run one row at a time")
        return None
    say(
        f"batch-capable copy {copy.sha256[:12]} answers as the model on all "
        f"{copy.images_checked} test images"
    )
    return copy


def smoke_images(gated: Gated, count: int = SMOKE_IMAGES) -> SmokeImages:
    """The first test images (of 200) the gated model classifies correctly, and their classes."""
    predicted = gated.result.evaluation.predicted
    labels = gated.dataset.labels
    chosen = [i for i in range(min(200, len(labels))) if predicted[i] == labels[i]][:count]
    return SmokeImages(gated.inputs[chosen], [int(predicted[i]) for i in chosen])


def publish_model(env: Environment, gated: Gated, batched: BatchableCopy | None) -> tuple[str, str]:
    """Copy the verified model (and its batch-capable copy) under the models prefix."""
    sha = gated.downloaded.sha256s["model"]
    name = Path(gated.reference.model.filename).name or f"{gated.reference.name}.onnx"
    model_url = _publish(env, gated.downloaded.model_path, f"{sha}/{name}")
    batched_url = ""
    if batched is not None:
        batched_url = _publish(env, batched.path, f"{sha}/batched-{batched.sha256}.onnx")
    return model_url, batched_url


def _publish(env: Environment, source: Path, name: str) -> str:
    """Upload `source` to `<models_url>/<name>` unless it is there; return its s3:// URL.

    Raises DeployError (one line: the S3 action refused, its resource and the grant
    that fixes it) for any answer but "not there yet" from the lookup or any failed
    upload. A missing key is a 404 only to a caller with s3:ListBucket (S3 API
    reference, HeadObject: https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html).
    """
    try:
        models = open_store(env.models_url, s3_client=lambda: env.client("s3"))
    except NotAStore:
        raise DeployError(f"models_url {env.models_url!r} must be an s3:// URL") from None
    except ValueError as exc:
        raise DeployError(f"models_url: {exc}") from None
    if not isinstance(models, S3Store):
        raise DeployError(f"models_url {env.models_url!r} must be an s3:// URL")
    url = models.url_of(name)
    try:
        if models.exists(name):
            say(f"already at {url}")
            return url
    except StoreUnreachable as exc:
        raise DeployError(f"could not reach S3 to publish {url}: {exc}") from None
    except StoreError as exc:
        raise _refused("s3:GetObject", "_publish", models.bucket, models.key(name), exc) from None
    try:
        models.upload_file(name, source)
    except StoreUnreachable as exc:
        raise DeployError(f"could not reach S3 to publish {url}: {exc}") from None
    except StoreError as exc:
        raise _refused("s3:PutObject", "_publish", models.bucket, models.key(name), exc) from None
    say(f"uploaded {url}")
    return url


def _refused(action: str, code: str, bucket: str, key: str, exc: StoreError) -> DeployError:
    """One line: what S3 refused, on which resource, and the grant that fixes it."""
    call = aws_calls.find(aws_calls.Role.DEPLOY, action, code)
    resource = f"arn:aws:s3:::{bucket}/{key}"
    if exc.code in ("AccessDenied", "403", "Forbidden"):
        return DeployError(
            f"S3 refused {action} on {resource} ({exc.code}): the {call.role} role needs "
            f"{action} on {call.resource.replace('{bucket}', bucket)} "
            f"({aws_calls.GRANTED_IN[call.role]}, listed in "
            "pipeline/aws_calls.py); apply the environment's Terraform, then deploy again"
        )
    detail = " ".join(str(exc).split())
    return DeployError(f"S3 refused {action} on {resource} ({exc.code}): {detail}")


def build_and_push(env: Environment, gated: Gated, git_sha: str) -> str:
    """This commit's image in the environment's repository, as `repository@digest`.

    Tags are immutable and image builds are not byte-reproducible, so an image already
    there is reused rather than built again: the one this environment released and
    verified for this code and model (`verified-<git tree>-<model sha256>`: an empty
    commit, a revert of a revert, a merge of the same tree), else the one an earlier run
    of this commit pushed (`<repository>:<git sha>`, e.g. GitHub's "Re-run job" after a
    failed smoke test). So every release of a verified tree runs the image an environment
    promoting from this one ships, and the registry's lifecycle keeps it as a released
    image (terraform/modules/registry).
    """
    ecr = registries.Ecr(env.client("ecr"))
    repository = _repository(env.ecr_repository_url)
    _, name = registries.split_repository_url(env.ecr_repository_url)
    tag = promotion.commit_tag(git_sha, gated.downloaded.sha256s["model"], REPO)
    verified = ecr.existing(name, tag)
    if verified is not None:
        say(f"reusing {repository}:{tag} ({verified.digest}), released for this code and model")
        return f"{repository}@{verified.digest}"
    pushed = ecr.existing(name, git_sha)
    if pushed is not None:
        say(f"reusing {repository}:{git_sha} ({pushed.digest}), pushed by an earlier run")
        return f"{repository}@{pushed.digest}"
    local = images.build(
        images.DEFAULT_TAG_REPO,
        git_sha,
        gated.downloaded.sha256s["model"],
        os.environ.get("BASE_IMAGE", images.DEFAULT_BASE_IMAGE),
        ca_bundle=images.default_ca_bundle(),
    )
    digest = registries.push(local, env.ecr_repository_url, git_sha, ecr=ecr)
    return f"{repository}@{digest}"


def source_repository(env: Environment, source: str) -> str:
    """The repository of `source`, which `env` promotes from: `<SOURCE>_ECR_REPOSITORY_URL`,
    else the one `env`'s own Terraform outputs name (`promote_from_repository_names`, in
    the order of `promote_from_environments`, on its registry)."""
    given = os.environ.get(override_name(source, "ecr_repository_url"))
    if given:
        return given
    names = terraform_outputs(env.environment).get("promote_from_repository_names") or []
    if source in env.promote_from and len(names) == len(env.promote_from):
        names = [names[env.promote_from.index(source)]]
    if not names:
        raise DeployError(
            f"{env.environment} promotes from no repository: set promote_from_environments in "
            f"terraform/envs/{env.environment}/terraform.tfvars, or "
            f"{override_name(source, 'ecr_repository_url')}"
        )
    registry, _ = registries.split_repository_url(env.ecr_repository_url)
    return f"{registry}/{names[0]}"


def promote(
    env: Environment,
    source: str,
    source_url: str,
    gated: Gated,
    git_sha: str,
    *,
    cli: images.ContainerCli | None = None,
) -> tuple[str, promotion.Provenance]:
    """Ship the image `source` verified for this code and model (see pipeline.promotion);
    build one only when DEPLOY_UNVERIFIED is set. DeployError when neither holds."""
    cli = cli or images.find_cli()
    ecr = registries.Ecr(env.client("ecr"))
    registry, _ = registries.split_repository_url(source_url)
    registries.login(cli, registry, ecr.credentials())
    model_sha256 = gated.downloaded.sha256s["model"]
    try:
        chosen = promotion.choose(
            environment=env.environment,
            source=source,
            commit=git_sha,
            tree=promotion.git_tree(git_sha, REPO),
            model_sha256=model_sha256,
            has_tag=lambda tag: registries.pull(cli, registry, f"{_repository(source_url)}:{tag}"),
        )
    except promotion.NotVerified as exc:
        raise DeployError(str(exc)) from None
    if chosen.unverified:
        say(
            f"warning: {promotion.OVERRIDE_VARIABLE} is set: building an image for "
            f"{env.environment} that {source} never verified"
        )
        return build_and_push(env, gated, git_sha), chosen
    verified = f"{_repository(source_url)}:{chosen.verified_tag}"
    say(f"promoting {verified}, verified on {source}")
    digest = registries.push(verified, env.ecr_repository_url, git_sha, ecr=ecr, cli=cli)
    return f"{_repository(env.ecr_repository_url)}@{digest}", chosen


def mark_verified(env: Environment, image: str, git_sha: str, model_sha256: str) -> str:
    """Tag the released `image` (repository@digest) `verified-<git tree>-<model sha256>` in
    the environment's repository: what an environment promoting from this one looks for.
    The tag is added in the registry (`Ecr.retag`), so it names the released digest itself
    and the image need not be on this machine.

    The tag names a tree and a model, not a build: when an earlier image of this tree and
    model holds it already (an empty commit, a revert of a revert, a branch fast-forwarded
    to a merge of the same tree), that image stays verified, since tags are immutable and
    both were built from the same code and model. So does one tagged between the lookup
    and the retag (ECR then answers ImageTagAlreadyExistsException, or
    ImageAlreadyExistsException when that image is this one: ECR API reference, PutImage).
    """
    ecr = registries.Ecr(env.client("ecr"))
    registry, name = registries.split_repository_url(env.ecr_repository_url)
    tag = promotion.commit_tag(git_sha, model_sha256, REPO)
    released = image.rpartition("@")[2]
    held = ecr.existing(name, tag)
    if held is None:
        try:
            ecr.retag(name, released, tag)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in _TAG_TAKEN:
                raise
            held = ecr.existing(name, tag)
        else:
            say(f"tagged {image} as {tag}")
            return tag
    if held is None or held.digest == released:
        say(f"{image} is tagged {tag} already")
    else:
        say(
            f"{tag} names {registry}/{name}@{held.digest} already, an earlier image of this "
            "tree and model: it stays the verified one (tags are immutable)"
        )
    return tag


# PutImage's answers when the tag is taken (ECR API reference, PutImage: Errors).
_TAG_TAKEN = ("ImageTagAlreadyExistsException", "ImageAlreadyExistsException")


def _repository(repository_url: str) -> str:
    registry, name = registries.split_repository_url(repository_url)
    return f"{registry}/{name}"


def refuse_older(env: Environment, git_sha: str) -> None:
    """DeployError when the environment runs a release of a later commit whose history
    holds `git_sha`: shipping it would put older code back. GitHub starts the queued deploys
    of one branch in the order their tests finished, not the order of the pushes, and
    "Re-run" of an old workflow run deploys its old commit again (GitHub Actions docs,
    "Control the concurrency of workflows and jobs"; "Re-running workflows and jobs").
    The same commit deploys again (a re-run of the latest push); a commit the history
    cannot place (a shallow checkout, another branch's) deploys, with a warning for the
    shallow one. Going back is `nox -s rollback`, or a revert commit."""
    latest = records.read_latest(env.records_url)
    if latest is None or latest.get("outcome") != "succeeded":
        return
    running = str(latest.get("git_sha", ""))
    if not running or running == git_sha:
        return
    later = history.contains(running, git_sha, REPO)
    if later is None:
        say(
            f"warning: cannot tell whether {env.environment}'s release of {running[:12]} is "
            f"later than {git_sha[:12]} (the checkout lacks one of them: fetch the history, "
            "actions/checkout's fetch-depth: 0)"
        )
    elif later:
        raise DeployError(
            f"{env.environment} runs {running[:12]}, a later commit whose history holds "
            f"{git_sha[:12]}: deploying this one would put older code back (a deploy that "
            "waited behind a later push, or a re-run of an old run). Nothing was changed. To "
            f"go back on purpose: nox -s rollback -- {env.environment}, or push a revert commit"
        )


def deploy(environment: str) -> dict:
    """Gate, ship and release to `environment`; the successful deployment record.

    A commit older than the one the environment runs, and a paused environment, are
    refused first (`refuse_older`, `pipeline.release.refuse_paused`).
    The gate runs against the environment's champion, so a failure there
    (GateFailed) touches nothing in AWS. Then the model is published under
    `models_url`, the image built and pushed (or, for an environment that promotes,
    the image its source verified is copied), and released (`pipeline.release.release`).
    Raises DeployError when the release rolled back or a step in between failed, and
    the errors of the steps (ArtifactError, RecordError, ImageError, ReleaseError,
    MissingEnvironment) as they come.
    """
    env = resolve(environment)
    git_sha = images.git_sha()
    refuse_older(env, git_sha)
    refuse_paused(env)
    gated = gate_model(
        load_reference(environ=os.environ),
        environment=environment,
        deployments_url=env.deployments_url,
        say=say,
    )
    batched = batched_copy(gated)
    model_url, batched_url = publish_model(env, gated, batched)
    provenance: dict[str, object] = {}
    if env.promote_from:
        source = env.promote_from[0]
        image, chosen = promote(env, source, source_repository(env, source), gated, git_sha)
        provenance = chosen.record()
    else:
        image = build_and_push(env, gated, git_sha)
        # What a successful release tags it (mark_verified), and a rollback withdraws.
        provenance = {
            "verified_tag": promotion.commit_tag(git_sha, gated.downloaded.sha256s["model"], REPO)
        }
    candidate = Candidate(
        image=image,
        git_sha=git_sha,
        model_name=gated.reference.name,
        model_url=model_url,
        model_sha256=gated.downloaded.sha256s["model"],
        gate=gated.result.record(),
        batched_url=batched_url,
        batched_sha256=batched.sha256 if batched else "",
        labels=gated.reference.labels,
        provenance=provenance,
    )
    outcome = release(env, candidate, smoke_images(gated), say=say)
    if not outcome.succeeded:
        raise DeployError(f"release to {environment} rolled back: {outcome.reason}")
    # Any environment may be another's promotion source (Terraform says who promotes
    # from whom), so every successful release leaves its verified tag.
    mark_verified(env, image, git_sha, candidate.model_sha256)
    return outcome.record
