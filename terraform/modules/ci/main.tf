# The role GitHub Actions assumes to deploy one environment: trusted only by
# workflow jobs of one repository running in the GitHub environment of the same
# name, and allowed only what a release needs.

data "aws_caller_identity" "current" {}

data "aws_region" "current" {}

locals {
  github_subject = "repo:${var.github_repository}:environment:${var.environment}"

  cluster_arn = "arn:aws:ecs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:cluster/${var.cluster_name}"
  tasks_arn   = "arn:aws:ecs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:task/${var.cluster_name}/*"

  deployments_prefix = "deployments/${var.environment}/"
}

################################################################################
# Trust: GitHub's OIDC tokens for one repository environment
################################################################################

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
# Permissions: what a release does, on this environment's resources only
################################################################################

data "aws_iam_policy_document" "deploy" {
  statement {
    sid = "EcrLogin"
    # GetAuthorizationToken has no resource-level permissions.
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "PushOwnRepository"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:CompleteLayerUpload",
      "ecr:DescribeImageScanFindings",
      "ecr:DescribeImages",
      "ecr:DescribeRepositories",
      "ecr:GetDownloadUrlForLayer",
      "ecr:InitiateLayerUpload",
      "ecr:ListImages",
      "ecr:PutImage",
      "ecr:UploadLayerPart",
    ]
    resources = [var.repository_arn]
  }

  dynamic "statement" {
    for_each = length(var.pull_repository_arns) > 0 ? [1] : []

    content {
      sid = "PullPromotedImages"
      actions = [
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:DescribeImages",
        "ecr:GetDownloadUrlForLayer",
        "ecr:ListImages",
      ]
      resources = var.pull_repository_arns
    }
  }

  statement {
    sid = "RegisterTaskDefinitions"
    # These task definition actions have no resource-level permissions.
    actions = [
      "ecs:DescribeTaskDefinition",
      "ecs:ListTaskDefinitions",
      "ecs:RegisterTaskDefinition",
    ]
    resources = ["*"]
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
    sid       = "DescribeOwnTasks"
    actions   = ["ecs:DescribeTasks"]
    resources = [local.tasks_arn]
  }

  statement {
    sid       = "ListOwnTasks"
    actions   = ["ecs:ListTasks"]
    resources = ["*"]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [local.cluster_arn]
    }
  }

  statement {
    sid       = "PassOwnTaskRoles"
    actions   = ["iam:PassRole"]
    resources = [var.task_role_arn, var.execution_role_arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }

  statement {
    sid       = "ReadModels"
    actions   = ["s3:GetObject"]
    resources = ["${var.bucket_arn}/models/*"]
  }

  statement {
    sid       = "ReadWriteOwnDeploymentRecords"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${var.bucket_arn}/${local.deployments_prefix}*"]
  }

  statement {
    sid       = "ListModelsAndOwnDeploymentRecords"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["models/*", "${local.deployments_prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = var.state_bucket_name == null ? [] : [1]

    content {
      sid       = "ReadOwnTerraformOutputs"
      actions   = ["s3:GetObject"]
      resources = ["arn:aws:s3:::${var.state_bucket_name}/${var.state_key}"]
    }
  }

  dynamic "statement" {
    for_each = var.state_bucket_name == null ? [] : [1]

    content {
      sid       = "ListOwnTerraformState"
      actions   = ["s3:ListBucket"]
      resources = ["arn:aws:s3:::${var.state_bucket_name}"]
    }
  }
}

resource "aws_iam_role_policy" "deploy" {
  name   = "deploy-${var.environment}"
  role   = aws_iam_role.deploy.id
  policy = data.aws_iam_policy_document.deploy.json
}
