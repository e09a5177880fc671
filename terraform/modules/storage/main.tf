# One bucket per environment holds everything the service and the pipeline
# share: models/ (read by tasks), capture/<env>/ (prediction records written by
# tasks), deployments/<env>/ (release records written by the pipeline) and
# athena-results/<env>/ (query results of the capture's Athena workgroup).

locals {
  capture_prefix        = "capture/"
  athena_results_prefix = "athena-results/"
}

################################################################################
# Bucket
################################################################################

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:Server access logs would need a second bucket per environment; object-level audit is CloudTrail's job at the account level.
  #checkov:skip=CKV_AWS_144:Cross-region replication is not worth its cost here: models are re-fetchable from model.toml and capture is sampled telemetry.
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events; the pipeline reads deployment records directly.
  bucket        = var.bucket_name
  force_destroy = var.force_destroy

  tags = var.tags
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket = aws_s3_bucket.this.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

# SSE-KMS with the account's AWS-managed `aws/s3` key: encrypted at rest with
# KMS audit trails, and every principal of the account that S3 lets through can
# use it, so IAM policies stay about prefixes rather than keys.
resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
    bucket_key_enabled = true
  }
}

################################################################################
# Policy: TLS only
################################################################################

data "aws_iam_policy_document" "tls_only" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.this.arn,
      "${aws_s3_bucket.this.arn}/*",
    ]

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

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.tls_only.json

  # S3 rejects a policy while the public access block is being written.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

################################################################################
# Lifecycle
################################################################################

locals {
  # A transition only makes sense for a part that will still be there after it.
  capture_transitions = [
    for transition in [
      { days = var.capture_infrequent_access_after_days, storage_class = "STANDARD_IA" },
      { days = var.capture_archive_after_days, storage_class = "GLACIER_IR" },
    ] : transition if transition.days < var.capture_retention_days
  ]
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  # STANDARD_IA and GLACIER_IR bill every object as at least 128 KB and charge each
  # transition, so a capture part smaller than that would cost more after moving than
  # before: S3 moves no object under 128 KB to any class (S3 API reference,
  # PutBucketLifecycleConfiguration, TransitionDefaultMinimumObjectSize). Set here
  # rather than left to the default of the day the configuration was first written.
  transition_default_minimum_object_size = "all_storage_classes_128K"

  rule {
    id     = "capture-retention"
    status = "Enabled"

    filter {
      prefix = local.capture_prefix
    }

    dynamic "transition" {
      for_each = local.capture_transitions

      content {
        days          = transition.value.days
        storage_class = transition.value.storage_class
      }
    }

    expiration {
      days = var.capture_retention_days
    }

    # Versioning keeps an expired part as a noncurrent version: gone a day later.
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  # Compaction deletes every part it merges, hourly: in a versioned bucket each delete
  # leaves a delete marker, the part's only version once its noncurrent version has
  # expired a day later. A rule that expires after N days removes such markers only
  # once they are N days old (up to 400 here), and every LIST of capture/ walks past
  # them meanwhile. This rule removes each as soon as it is the only version left; S3
  # takes ExpiredObjectDeleteMarker only in a rule without Days or Date (S3 user
  # guide, "Lifecycle configuration elements", "Managing delete markers"; S3 API
  # reference, LifecycleExpiration).
  rule {
    id     = "capture-delete-markers"
    status = "Enabled"

    filter {
      prefix = local.capture_prefix
    }

    expiration {
      expired_object_delete_marker = true
    }
  }

  # The capture_catalog module's Athena workgroup writes every query's result under
  # athena-results/<env>/, and nothing else removes them. The report reads a result
  # once, right after its query (pipeline/predictions/athena.py), and Athena reuses a
  # result for at most 7 days (Athena API reference, ResultReuseByAgeConfiguration,
  # MaxAgeInMinutes up to 10,080), so nothing reads an older one.
  rule {
    id     = "athena-results-retention"
    status = "Enabled"

    filter {
      prefix = local.athena_results_prefix
    }

    expiration {
      days = var.athena_results_retention_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  rule {
    id     = "expire-old-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_retention_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}
