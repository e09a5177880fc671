"""Every AWS call the pipeline and the service make, and the role each one runs under.

The one list of what each role needs. Terraform grants exactly these actions on
these resources (`terraform/modules/ci` for the deploy role, the IAM sections of
`terraform/modules/service` for the task and execution roles); the policy tests
read the policies Terraform rendered and check every entry against them, and the
README's role table is printed from this list (`python -m pipeline.aws_calls`).

A resource is an ARN pattern over an environment's names: `{bucket}`,
`{environment}`, `{region}`, `{account}`, `{cluster}`, `{service}`, `{repository}`,
`{promote_from_repository}`, `{state_bucket}`, `{state_key}`, `{task_role_arn}`,
`{execution_role_arn}`, `{log_group}`, `{api_token_secret_arn}`,
`{compaction_role_arn}`, `{compaction_task_family}`. Sources: the Service Authorization
Reference (https://docs.aws.amazon.com/service-authorization/latest/reference/)
for each service's actions and resource types, the ECR user guide's "Private
repository policies" and "Pushing an image"/"Pulling an image" pages for the
registry calls behind `docker push`/`pull`, the ECS developer guide's "Required IAM
permissions for Amazon ECS secrets" for the task definition's `secrets`, and
Terraform's S3 backend page (https://developer.hashicorp.com/terraform/language/backend/s3)
for the state.

Calls made with a person's own credentials (`nox -s plan|apply`, `nox -s logs|report`)
are not listed: this project grants nothing for them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """The roles Terraform makes per environment (`onnx-ship-<env>-<role>`)."""

    DEPLOY = "deploy"  # GitHub Actions assumes it through OIDC and runs `nox -s deploy-<env>`
    TASK = "task"  # the service's containers
    EXECUTION = "execution"  # ECS, to start a task: pull its image, send its logs
    COMPACTION = "compaction"  # the scheduled compaction task (the service image)
    SCHEDULER = "scheduler"  # EventBridge Scheduler, to start the compaction task


GRANTED_IN = {
    Role.DEPLOY: "terraform/modules/ci",
    Role.TASK: "terraform/modules/service (task role)",
    Role.EXECUTION: "terraform/modules/service (execution role)",
    Role.COMPACTION: "terraform/modules/capture_catalog (compaction role)",
    Role.SCHEDULER: "terraform/modules/capture_catalog (scheduler role)",
}


@dataclass(frozen=True)
class AwsCall:
    """One IAM action a role needs on one resource pattern, and the code that needs it."""

    role: Role
    action: str
    resource: str  # ARN pattern, `{name}` fields filled from the environment
    code: str  # the function (or tool) making the request
    why: str
    # Condition keys the request carries, as IAM sees them (e.g. s3:prefix of a listing).
    context: tuple[tuple[str, str], ...] = ()
    # Only environments that promote another's image (prod) make this call.
    promotion: bool = False
    # Only environments that require authentication (Terraform's require_authentication,
    # on by default) have the API tokens secret this call reads.
    authentication: bool = False

    def arn(self, names: Mapping[str, str]) -> str:
        """The resource with the environment's names filled in (KeyError names a missing one)."""
        return self.resource.format_map(names)

    def condition_values(self, names: Mapping[str, str]) -> dict[str, str]:
        return {key: value.format_map(names) for key, value in self.context}


BUCKET = "arn:aws:s3:::{bucket}"
MODELS = "arn:aws:s3:::{bucket}/models/*"
RECORDS = "arn:aws:s3:::{bucket}/deployments/{environment}/*"
CAPTURE = "arn:aws:s3:::{bucket}/capture/{environment}/*"
REPOSITORY = "arn:aws:ecr:{region}:{account}:repository/{repository}"
SOURCE_REPOSITORY = "arn:aws:ecr:{region}:{account}:repository/{promote_from_repository}"
SERVICE = "arn:aws:ecs:{region}:{account}:service/{cluster}/{service}"
LOG_STREAMS = "arn:aws:logs:{region}:{account}:log-group:{log_group}:log-stream:*"
API_TOKENS = "{api_token_secret_arn}"
COMPACTION_REVISIONS = "arn:aws:ecs:{region}:{account}:task-definition/{compaction_task_family}:*"
SERVICE_REVISIONS = "arn:aws:ecs:{region}:{account}:task-definition/{task_family}:*"
# A RegisterTaskDefinition with tags is also authorised as ecs:TagResource, with this key
# (ECS developer guide, "Grant permission to tag resources on creation").
TAGGED_ON_REGISTER = (("ecs:CreateAction", "RegisterTaskDefinition"),)
CLUSTER = "arn:aws:ecs:{region}:{account}:cluster/{cluster}"
# The service's alarms are named after it (terraform/modules/service). The CloudWatch API
# reference (DescribeAlarms) asks for a grant on `*` only to read composite alarms.
DEPLOYMENT_ALARMS = "arn:aws:cloudwatch:{region}:{account}:alarm:{service}-*"
PASSED_TO_ECS_TASKS = (("iam:PassedToService", "ecs-tasks.amazonaws.com"),)

# `docker push` / `podman push` against ECR: the registry API calls behind a push
# (ECR user guide, "Pushing a Docker image", required IAM permissions).
_PUSH = (
    ("ecr:BatchCheckLayerAvailability", "which layers the repository already has"),
    ("ecr:InitiateLayerUpload", "start uploading a layer"),
    ("ecr:UploadLayerPart", "upload a layer"),
    ("ecr:CompleteLayerUpload", "finish a layer"),
    ("ecr:PutImage", "write the manifest under the tag"),
)

# `docker pull` / `podman pull` from ECR: the manifest, then every blob (layers and the
# image's config) the local store lacks; podman reads the config blob even of an image
# it holds (ECR user guide, "Pulling an image", required IAM permissions; the managed
# policy AmazonEC2ContainerRegistryPullOnly).
_PULL = (
    ("ecr:BatchGetImage", "read the manifest"),
    ("ecr:GetDownloadUrlForLayer", "read the layers and the config the machine lacks"),
)

# What ECR authorises for each container CLI command against a repository.
REGISTRY_ACTIONS: dict[str, tuple[str, ...]] = {
    "push": tuple(action for action, _ in _PUSH),
    "pull": tuple(action for action, _ in _PULL),
}

CALLS: tuple[AwsCall, ...] = (
    # -- deploy role: the environment's bucket ---------------------------------------
    AwsCall(
        Role.DEPLOY,
        "s3:GetObject",
        MODELS,
        "pipeline.deploy._publish (head_object)",
        "is the gated model (or its batch-capable copy) already published?",
    ),
    AwsCall(
        Role.DEPLOY,
        "s3:PutObject",
        MODELS,
        "pipeline.deploy._publish (upload_file)",
        "publish the gated model and its batch-capable copy under models/<sha256>/",
    ),
    AwsCall(
        Role.DEPLOY,
        "s3:AbortMultipartUpload",
        MODELS,
        "pipeline.deploy._publish (upload_file)",
        "a model over 8 MiB goes up in parts; a failed upload is aborted, not left to bill "
        "until the bucket's lifecycle removes it (S3 user guide, multipart upload permissions)",
    ),
    AwsCall(
        Role.DEPLOY,
        "s3:ListBucket",
        BUCKET,
        "pipeline.records._list",
        "list the environment's deployment records (rollback)",
        context=(("s3:prefix", "deployments/{environment}/"),),
    ),
    AwsCall(
        Role.DEPLOY,
        "s3:ListBucket",
        BUCKET,
        "pipeline.records._read, pipeline.deploy._publish",
        "S3 checks it, with no s3:prefix, before it says a key does not exist: a first "
        "deploy's missing latest.json or model is a 404 with it and a 403 without "
        "(S3 API reference, GetObject and HeadObject permissions)",
    ),
    AwsCall(
        Role.DEPLOY,
        "s3:GetObject",
        RECORDS,
        "pipeline.records.read_latest, pipeline.records.list_records",
        "the champion the gate compares against; status; rollback's history",
    ),
    AwsCall(
        Role.DEPLOY,
        "s3:PutObject",
        RECORDS,
        "pipeline.records.write",
        "the deployment record of every release and rollback, and latest.json",
    ),
    # -- deploy role: Terraform state (terraform init + output, read only) ---------------
    AwsCall(
        Role.DEPLOY,
        "s3:ListBucket",
        "arn:aws:s3:::{state_bucket}",
        "pipeline.environment.terraform_outputs (terraform init)",
        "the S3 backend lists workspaces under env:/ at init",
        context=(("s3:prefix", "env:/"),),
    ),
    AwsCall(
        Role.DEPLOY,
        "s3:GetObject",
        "arn:aws:s3:::{state_bucket}/{state_key}",
        "pipeline.environment.terraform_outputs (terraform init, terraform output)",
        "read the environment's outputs; init and output of the default workspace take "
        "no lock, so the deploy never writes the state or its .tflock",
    ),
    # -- deploy role: ECR ---------------------------------------------------------------
    AwsCall(
        Role.DEPLOY,
        "ecr:GetAuthorizationToken",
        "*",
        "pipeline.registry.Ecr.credentials",
        "the registry login (the action has no resource-level permissions)",
    ),
    AwsCall(
        Role.DEPLOY,
        "ecr:BatchGetImage",
        REPOSITORY,
        "pipeline.registry.Ecr.existing, pipeline.registry.push",
        "is the tag taken (tags are immutable)? Also listed for every push",
    ),
    AwsCall(
        Role.DEPLOY,
        "ecr:BatchDeleteImage",
        REPOSITORY,
        "pipeline.release.rollback (pipeline.registry.Ecr.withdraw)",
        "a rollback removes the verified tag of the code and model it leaves, so an "
        "environment promoting from this one refuses them (the image and its other tags stay)",
    ),
    AwsCall(
        Role.DEPLOY,
        "ecr:BatchGetImage",
        REPOSITORY,
        "pipeline.release.rollback (pipeline.registry.Ecr.holds)",
        "is the image of the release a rollback returns to still there (the lifecycle "
        "policy expires images)?",
    ),
    *(
        AwsCall(Role.DEPLOY, action, REPOSITORY, "pipeline.registry.push (podman/docker push)", why)
        for action, why in _PUSH
    ),
    *(
        AwsCall(
            Role.DEPLOY,
            action,
            REPOSITORY,
            "pipeline.deploy.mark_verified (pipeline.registry.Ecr.retag)",
            f'the released image tagged verified in the registry: {why} ("Retagging an '
            'image in Amazon ECR")',
        )
        for action, why in (
            ("ecr:BatchGetImage", "its manifest, as the repository holds it"),
            ("ecr:PutImage", "the same manifest under the verified tag"),
        )
    ),
    *(
        AwsCall(
            Role.DEPLOY,
            action,
            SOURCE_REPOSITORY,
            "pipeline.deploy.promote (podman/docker pull)",
            f"the image dev verified, to ship the same bytes: {why}",
            promotion=True,
        )
        for action, why in _PULL
    ),
    # -- deploy role: ECS and the roles it hands to tasks -------------------------------
    AwsCall(
        Role.DEPLOY,
        "ecs:DescribeServices",
        SERVICE,
        "pipeline.release.Ecs.service",
        "the running task definition, the rollout's progress, status",
    ),
    AwsCall(
        Role.DEPLOY,
        "ecs:DescribeServices",
        SERVICE,
        "pipeline.release.refuse_paused",
        "a deploy to a paused environment (0 tasks desired) stops before the gate",
    ),
    AwsCall(
        Role.DEPLOY,
        "cloudwatch:DescribeAlarms",
        DEPLOYMENT_ALARMS,
        "pipeline.alarms.DeploymentAlarms.states",
        "the service's deployment alarms as a release starts, and for their bake time after "
        "its rollout when one was in ALARM then (ECS ignores them all for such a deployment)",
    ),
    AwsCall(
        Role.DEPLOY,
        "ecs:DescribeTaskDefinition",
        "*",
        "pipeline.release.Ecs.register",
        "the running revision a release copies (no resource-level permissions)",
    ),
    AwsCall(
        Role.DEPLOY,
        "ecs:DescribeTaskDefinition",
        "*",
        "pipeline.release.Ecs._confirm",
        "the new revision is found before the service is pointed at it (the ECS API is "
        "eventually consistent: ECS API reference, RunTask and UpdateService)",
    ),
    AwsCall(
        Role.DEPLOY,
        "ecs:DescribeTaskDefinition",
        "*",
        "pipeline.release.Ecs.revision_status",
        "after a failed release, and before a rollback: is the revision it returns to still "
        "ACTIVE (ECS cannot point a service at an INACTIVE one; ECS API reference, "
        "DeregisterTaskDefinition)?",
    ),
    AwsCall(
        Role.DEPLOY,
        "ecs:DescribeTaskDefinition",
        "*",
        "pipeline.release.Ecs.container (status)",
        "the image, model and commit of the revision that runs, whatever the latest "
        "release record says",
    ),
    AwsCall(
        Role.DEPLOY,
        "ecs:RegisterTaskDefinition",
        "*",
        "pipeline.release.Ecs.register",
        "the new revision with the image and model (no resource-level permissions)",
    ),
    AwsCall(
        Role.DEPLOY,
        "ecs:TagResource",
        SERVICE_REVISIONS,
        "pipeline.release.Ecs.register (tags)",
        "the new revision keeps the tags Terraform gave the one it copies (authorised as "
        "ecs:TagResource on creation only)",
        context=TAGGED_ON_REGISTER,
    ),
    AwsCall(
        Role.DEPLOY,
        "ecs:DescribeTaskDefinition",
        "*",
        "pipeline.compaction_task.register",
        "the released revision the compaction family's revision copies",
    ),
    AwsCall(
        Role.DEPLOY,
        "ecs:RegisterTaskDefinition",
        "*",
        "pipeline.compaction_task.register",
        "once a release succeeded (or a rollback completed): the compaction family's revision "
        "with its image, the compaction command and role",
    ),
    AwsCall(
        Role.DEPLOY,
        "ecs:TagResource",
        COMPACTION_REVISIONS,
        "pipeline.compaction_task.register (tags)",
        "the compaction revision keeps the released revision's tags (authorised as "
        "ecs:TagResource on creation only)",
        context=TAGGED_ON_REGISTER,
    ),
    AwsCall(
        Role.DEPLOY,
        "ecs:UpdateService",
        SERVICE,
        "pipeline.release.Ecs.update",
        "point the service at the new revision, or back (rollback)",
    ),
    AwsCall(
        Role.DEPLOY,
        "iam:PassRole",
        "{task_role_arn}",
        "pipeline.release.Ecs.register (taskRoleArn)",
        "a registered revision names the task role (ECS developer guide, "
        "'Permissions to pass a role')",
        context=PASSED_TO_ECS_TASKS,
    ),
    AwsCall(
        Role.DEPLOY,
        "iam:PassRole",
        "{execution_role_arn}",
        "pipeline.release.Ecs.register (executionRoleArn)",
        "a registered revision names the execution role",
        context=PASSED_TO_ECS_TASKS,
    ),
    AwsCall(
        Role.DEPLOY,
        "iam:PassRole",
        "{compaction_role_arn}",
        "pipeline.compaction_task.register (taskRoleArn)",
        "the compaction family's revision names the compaction role",
        context=PASSED_TO_ECS_TASKS,
    ),
    # -- deploy role: the service's bearer token ------------------------------------------
    AwsCall(
        Role.DEPLOY,
        "secretsmanager:GetSecretValue",
        API_TOKENS,
        "pipeline.environment.Environment.api_token",
        "the first of the service's bearer tokens, which the smoke test and `nox -s status` "
        "send (the `api_token_secret_arn` output)",
        authentication=True,
    ),
    # -- task role: the service -----------------------------------------------------------
    AwsCall(
        Role.TASK,
        "s3:GetObject",
        MODELS,
        "service.artifacts._download_s3 (download_file: HeadObject, then GetObject)",
        "load MODEL_URL and MODEL_BATCHED_URL at start-up",
    ),
    AwsCall(
        Role.TASK,
        "s3:PutObject",
        CAPTURE,
        "service.store.S3Store.put_new (If-None-Match: *)",
        "write prediction parts, and re-send the ones the spool kept",
    ),
    # -- execution role: ECS starting a task ----------------------------------------------
    AwsCall(
        Role.EXECUTION,
        "ecr:GetAuthorizationToken",
        "*",
        "ECS agent (image pull)",
        "the registry login for the task's image",
    ),
    AwsCall(
        Role.EXECUTION,
        "ecr:BatchCheckLayerAvailability",
        REPOSITORY,
        "ECS agent (image pull)",
        "which of the image's layers exist (ECS developer guide, task execution IAM role)",
    ),
    AwsCall(
        Role.EXECUTION,
        "ecr:BatchGetImage",
        REPOSITORY,
        "ECS agent (image pull)",
        "the task definition's image manifest",
    ),
    AwsCall(
        Role.EXECUTION,
        "ecr:GetDownloadUrlForLayer",
        REPOSITORY,
        "ECS agent (image pull)",
        "the image's layers",
    ),
    AwsCall(
        Role.EXECUTION,
        "logs:CreateLogStream",
        LOG_STREAMS,
        "awslogs log driver",
        "one stream per task in the service's log group",
    ),
    AwsCall(
        Role.EXECUTION,
        "logs:PutLogEvents",
        LOG_STREAMS,
        "awslogs log driver",
        "the container's stdout and stderr",
    ),
    AwsCall(
        Role.EXECUTION,
        "secretsmanager:GetSecretValue",
        API_TOKENS,
        "ECS agent (task start: the task definition's secrets)",
        "API_TOKENS for the container, read when a task starts (ECS developer guide, "
        "'Required IAM permissions for Amazon ECS secrets'; the AWS-managed key needs no "
        "kms:Decrypt)",
        authentication=True,
    ),
    # -- compaction role: the scheduled compaction task -----------------------------------
    AwsCall(
        Role.COMPACTION,
        "s3:ListBucket",
        BUCKET,
        "pipeline.predictions.store.list_hours (list_objects_v2)",
        "the hours of capture/<env>/ and what each holds",
        context=(("s3:prefix", "capture/{environment}/2025/03/01/"),),
    ),
    AwsCall(
        Role.COMPACTION,
        "s3:ListBucket",
        BUCKET,
        "pipeline.predictions.compact.compact_hour (read_part, sha256)",
        "S3 checks it, with no s3:prefix, before it says a key does not exist: a part another "
        "run deleted after this one listed it is a 404 with it and a 403 without (S3 API "
        "reference, GetObject permissions)",
    ),
    AwsCall(
        Role.COMPACTION,
        "s3:GetObject",
        CAPTURE,
        "pipeline.predictions.compact.compact_hour (read_part, read_manifest, sha256)",
        "read an hour's parts and its manifests, and the merged objects back to check them",
    ),
    AwsCall(
        Role.COMPACTION,
        "s3:PutObject",
        CAPTURE,
        "service.store.S3Store.put_new, put_new_stream (If-None-Match: *)",
        "write the merged objects (multipart uploads: CreateMultipartUpload, UploadPart and "
        "CompleteMultipartUpload are s3:PutObject) and commit them with the manifest",
    ),
    AwsCall(
        Role.COMPACTION,
        "s3:AbortMultipartUpload",
        CAPTURE,
        "service.store.S3Store.put_new_stream (abort_multipart_upload)",
        "a merged object whose upload failed (or found its key taken) is aborted, not left "
        "to bill until the bucket's lifecycle removes it (S3 user guide, multipart upload "
        "permissions)",
    ),
    AwsCall(
        Role.COMPACTION,
        "s3:DeleteObject",
        CAPTURE,
        "service.store.S3Store.delete (DeleteObjects)",
        "remove the parts a manifest covers, and merged objects no manifest commits",
    ),
    # -- scheduler role: EventBridge Scheduler starting the compaction task ---------------
    AwsCall(
        Role.SCHEDULER,
        "ecs:RunTask",
        COMPACTION_REVISIONS,
        "EventBridge Scheduler (ECS RunTask target)",
        "start the compaction family's latest revision (the last successful release's image)",
        context=(("ecs:cluster", CLUSTER),),
    ),
    AwsCall(
        Role.SCHEDULER,
        "iam:PassRole",
        "{compaction_role_arn}",
        "EventBridge Scheduler (ECS RunTask target)",
        "the compaction task's role (the revision's taskRoleArn)",
        context=PASSED_TO_ECS_TASKS,
    ),
    AwsCall(
        Role.SCHEDULER,
        "iam:PassRole",
        "{execution_role_arn}",
        "EventBridge Scheduler (ECS RunTask target)",
        "the execution role that pulls the image and sends the logs",
        context=PASSED_TO_ECS_TASKS,
    ),
)


def calls(role: Role, *, promotes: bool = False, authenticates: bool = True) -> list[AwsCall]:
    """The calls `role` makes in an environment (`promotes`: it ships another's image;
    `authenticates`: it has the API tokens secret, Terraform's default)."""
    return [
        c
        for c in CALLS
        if c.role is role
        and (promotes or not c.promotion)
        and (authenticates or not c.authentication)
    ]


def find(role: Role, action: str, code_part: str = "") -> AwsCall:
    """The entry for `action` by `role` (whose code mentions `code_part`); KeyError if none."""
    for call in CALLS:
        if call.role is role and call.action == action and code_part in call.code:
            return call
    raise KeyError(f"{role} makes no {action} call from {code_part or 'anywhere'}")


def markdown_table() -> str:
    """The README's role table: role, action, resource, code."""
    lines = ["| role | action | resource | code |", "| --- | --- | --- | --- |"]
    for call in CALLS:
        resource = call.resource.replace("|", "\\|")
        only = " (environments that promote)" if call.promotion else ""
        only += " (environments that require authentication)" if call.authentication else ""
        lines.append(f"| {call.role} | `{call.action}` | `{resource}`{only} | `{call.code}` |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
