# One-time, per-account setup: the bucket holding every environment's
# Terraform state, and the GitHub OIDC provider every environment's deploy role
# trusts (an account holds one provider per URL, so it cannot live in an
# environment root).

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = {
      Project   = var.project
      ManagedBy = "terraform"
      Root      = "bootstrap"
    }
  }
}

data "aws_caller_identity" "current" {}

locals {
  state_bucket_name = coalesce(var.state_bucket_name, "${var.project}-tfstate-${data.aws_caller_identity.current.account_id}-${var.aws_region}")
}

################################################################################
# State bucket
################################################################################

resource "aws_s3_bucket" "state" {
  #checkov:skip=CKV_AWS_18:Server access logs would need a second bucket; the state bucket is versioned and only Terraform and the deploy roles touch it.
  #checkov:skip=CKV_AWS_144:State is versioned in one region; cross-region replication is not worth a second bucket for a few small files.
  #checkov:skip=CKV2_AWS_62:Nothing consumes state bucket events.
  bucket = local.state_bucket_name

  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_s3_bucket_ownership_controls" "state" {
  bucket = aws_s3_bucket.state.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "state" {
  bucket = aws_s3_bucket.state.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "state" {
  bucket = aws_s3_bucket.state.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "state" {
  bucket = aws_s3_bucket.state.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
    bucket_key_enabled = true
  }
}

data "aws_iam_policy_document" "state_tls_only" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.state.arn, "${aws_s3_bucket.state.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "state" {
  bucket = aws_s3_bucket.state.id
  policy = data.aws_iam_policy_document.state_tls_only.json

  depends_on = [aws_s3_bucket_public_access_block.state]
}

resource "aws_s3_bucket_lifecycle_configuration" "state" {
  bucket = aws_s3_bucket.state.id

  rule {
    id     = "expire-old-state-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.state_version_retention_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.state]
}

################################################################################
# GitHub OIDC provider
################################################################################

locals {
  github_oidc_url = "https://token.actions.githubusercontent.com"
  # What aws-actions/configure-aws-credentials asks for as the token's audience.
  github_oidc_audience = "sts.amazonaws.com"
  github_oidc_provider_arn = (
    var.create_github_oidc_provider
    ? aws_iam_openid_connect_provider.github[0].arn
    : data.aws_iam_openid_connect_provider.existing[0].arn
  )
}

# An account holds one provider per URL (CreateOpenIDConnectProvider answers
# EntityAlreadyExists for a second): where the account has one already, it is looked up
# instead, and must admit the audience the workflow's tokens carry.
resource "aws_iam_openid_connect_provider" "github" {
  count = var.create_github_oidc_provider ? 1 : 0

  url             = local.github_oidc_url
  client_id_list  = [local.github_oidc_audience]
  thumbprint_list = var.github_oidc_thumbprints
}

moved {
  from = aws_iam_openid_connect_provider.github
  to   = aws_iam_openid_connect_provider.github[0]
}

data "aws_iam_openid_connect_provider" "existing" {
  count = var.create_github_oidc_provider ? 0 : 1

  url = local.github_oidc_url

  lifecycle {
    postcondition {
      condition     = contains(self.client_id_list, local.github_oidc_audience)
      error_message = "The account's GitHub OIDC provider does not admit the audience sts.amazonaws.com, which the workflow's tokens carry: add it with `aws iam add-client-id-to-open-id-connect-provider --open-id-connect-provider-arn <its ARN> --client-id sts.amazonaws.com`, then apply again."
    }
  }
}
