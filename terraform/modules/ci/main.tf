# The role GitHub Actions assumes to deploy one environment: trusted only by jobs
# of one workflow file on one branch of one repository, running in the GitHub
# environment of the same name, and allowed only what a release needs.

# aws, aws-cn or aws-us-gov: ARNs built here name the region's partition.
data "aws_partition" "current" {}

locals {
  # The repository's OIDC subject, customised to the claims repo, context and
  # job_workflow_ref (GitHub docs, "OpenID Connect", "Customizing the subject claims";
  # the set-up step is in terraform/README.md):
  #   repo:<owner>/<repo>:environment:<env>:job_workflow_ref:<owner>/<repo>/<workflow>@<ref>
  # job_workflow_ref names the workflow file and the branch it ran from, so a token
  # from another branch or another workflow file differs even when the GitHub
  # environment lets that branch in. A repository still on GitHub's default subject
  # (repo:<owner>/<repo>:environment:<env>) matches nothing: the role fails closed.
  # A repository with immutable subject claims (every one created, renamed or
  # transferred since 2026-07-15) has its owner's and its own numeric IDs in the repo
  # part, `repo:<owner>@<owner id>/<repo>@<repo id>:...`, and names only in
  # job_workflow_ref (GitHub docs, "OpenID Connect", "Immutable subject claims"):
  # github_repository is then given with its IDs.
  repository_names = replace(var.github_repository, "/@[0-9]+/", "")
  job_workflow_ref = "${local.repository_names}/${var.github_workflow_path}@refs/heads/${var.github_branch}"
  github_subject   = "repo:${var.github_repository}:environment:${var.environment}:job_workflow_ref:${local.job_workflow_ref}"

  deployments_prefix = "deployments/${var.environment}/"

  # arn:<partition>:ecs:<region>:<account>:service/<cluster>/<service>
  service_arn_parts = split(":", var.service_arn)
  # The service module names the service and its deployment alarms after var.name.
  deployment_alarms = "arn:${data.aws_partition.current.partition}:cloudwatch:${local.service_arn_parts[3]}:${local.service_arn_parts[4]}:alarm:${var.name}-*"
}

################################################################################
# Trust: GitHub's OIDC tokens of one workflow, branch and environment
################################################################################

# IAM evaluates `sub` and `aud` of a GitHub token (IAM user guide, "Available keys
# for AWS OIDC federation"); both are matched exactly (StringEquals), no wildcard.
data "aws_iam_policy_document" "trust" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:aud"
      values   = ["sts.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:sub"
      values   = [local.github_subject]
    }
  }
}

resource "aws_iam_role" "deploy" {
  name                 = "${var.name}-deploy"
  description          = "GitHub Actions deploys ${var.environment} (${local.github_subject})"
  assume_role_policy   = data.aws_iam_policy_document.trust.json
  max_session_duration = 3600

  tags = var.tags
}

################################################################################
# Permissions: what a release does, on this environment's resources only.
# Each statement serves entries of pipeline/aws_calls.py (the one list of the
# calls and the code that makes them); the policy tests check every entry
# against this policy as Terraform renders it.
################################################################################

data "aws_iam_policy_document" "deploy" {
  statement {
    sid = "EcrLogin"
    # GetAuthorizationToken has no resource-level permissions.
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "PushPullOwnRepository"
    # The calls behind `docker push` (ECR user guide, "Pushing an image"), the tag
    # lookup before it (BatchGetImage), and the verified tag put on a released image in
    # the registry (BatchGetImage, PutImage: "Retagging an image in Amazon ECR").
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:CompleteLayerUpload",
      "ecr:InitiateLayerUpload",
      "ecr:PutImage",
      "ecr:UploadLayerPart",
    ]
    resources = [var.repository_arn]
  }

  statement {
    sid = "WithdrawVerification"
    # A rollback removes the verified tag of what it leaves (BatchDeleteImage by tag: the
    # image and its other tags stay), so no environment promotes it. ECR has no condition
    # key for the tag, so the grant covers any image of this repository, as the push does.
    actions   = ["ecr:BatchDeleteImage"]
    resources = [var.repository_arn]
  }

  dynamic "statement" {
    for_each = length(var.pull_repository_arns) > 0 ? [1] : []

    content {
      sid = "PullPromotedImages"
      actions = [
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
      ]
      resources = var.pull_repository_arns
    }
  }

  statement {
    sid = "RegisterTaskDefinitions"
    # DescribeTaskDefinition has no resource-level permissions; RegisterTaskDefinition is
    # authorized on the revision it creates (Service Authorization Reference, Amazon ECS),
    # and the TagResource statement below holds its tags to the service's family.
    actions = [
      "ecs:DescribeTaskDefinition",
      "ecs:RegisterTaskDefinition",
    ]
    resources = ["*"]
  }

  statement {
    sid = "TagRevisionsOnRegister"
    # A revision registered with tags (the ones Terraform gave the revision it copies) is
    # also authorised as ecs:TagResource; the condition allows tags only as a revision is
    # registered, never on an existing resource (ECS developer guide, "Grant permission to
    # tag resources on creation").
    actions = ["ecs:TagResource"]
    resources = [
      for family in compact(var.task_families) :
      "${split("service/", var.service_arn)[0]}task-definition/${family}:*"
    ]

    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RegisterTaskDefinition"]
    }
  }

  statement {
    sid = "UpdateOwnService"
    actions = [
      "ecs:DescribeServices",
      "ecs:UpdateService",
    ]
    resources = [var.service_arn]
  }

  statement {
    sid = "ReadOwnDeploymentAlarms"
    # A release reads the service's deployment alarms (named after it) as it starts: ECS
    # ignores them all for a deployment that starts while one is in ALARM, and the release
    # then watches them itself (pipeline/alarms.py). Scoped to the alarms: the CloudWatch
    # API reference (DescribeAlarms) asks for `*` only to read composite alarms.
    actions   = ["cloudwatch:DescribeAlarms"]
    resources = [local.deployment_alarms]
  }

  statement {
    sid       = "PassOwnTaskRoles"
    actions   = ["iam:PassRole"]
    resources = [var.task_role_arn, var.execution_role_arn, var.compaction_role_arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }

  statement {
    sid = "PublishModels"
    # boto3 uploads a model over 8 MiB in parts (PutObject covers them) and aborts the
    # upload when a part fails, which is an action of its own (S3 user guide, "Multipart
    # upload API and permissions").
    actions   = ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"]
    resources = ["${var.bucket_arn}/models/*"]
  }

  statement {
    sid       = "ReadWriteOwnDeploymentRecords"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${var.bucket_arn}/${local.deployments_prefix}*"]
  }

  statement {
    sid = "ListOwnBucket"
    # Without a condition: S3 checks ListBucket, with no s3:prefix in the request,
    # before it answers 404 rather than 403 for a key that does not exist (a first
    # deploy's latest.json, a model not yet published).
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]
  }

  dynamic "statement" {
    for_each = var.api_token_secret_arn != "" ? [1] : []

    content {
      sid = "ReadApiToken"
      # The smoke test and `nox -s status` send the service's first token.
      actions   = ["secretsmanager:GetSecretValue"]
      resources = [var.api_token_secret_arn]
    }
  }

  statement {
    sid       = "ReadOwnTerraformOutputs"
    actions   = ["s3:GetObject"]
    resources = ["arn:${data.aws_partition.current.partition}:s3:::${var.state_bucket_name}/${var.state_key}"]
  }

  statement {
    sid = "ListTerraformWorkspaces"
    # `terraform init` lists env:/ for workspaces; the default workspace's init and
    # `terraform output` take no lock, so the lock file needs no grant.
    actions   = ["s3:ListBucket"]
    resources = ["arn:${data.aws_partition.current.partition}:s3:::${var.state_bucket_name}"]

    condition {
      test     = "StringEquals"
      variable = "s3:prefix"
      values   = ["env:/"]
    }
  }
}

resource "aws_iam_role_policy" "deploy" {
  name   = "deploy-${var.environment}"
  role   = aws_iam_role.deploy.id
  policy = data.aws_iam_policy_document.deploy.json
}
