# SQL over the prediction capture: a Glue table over capture/<environment>/ whose hour
# partitions come from partition projection (no crawler, no MSCK REPAIR TABLE), an
# Athena workgroup with its result location and a byte-scanned limit, saved queries
# for the report's figures, and the hourly compaction task that keeps an hour to a
# few objects (pipeline/predictions/compact.py).

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  capture_prefix = "capture/${var.environment}"
  location       = "s3://${var.bucket_name}/${local.capture_prefix}/"
  database       = replace("${var.name}_capture", "-", "_")

  # The workgroup's byte limit admits query_scan_days (by default the widest saved query's
  # window, requests-by-model-version: 7 days) at the environment's busiest capture; a gzip
  # JSON Lines record of one example is about 90 bytes (README, "The report").
  record_bytes = 100
  bytes_scanned_cutoff = max(
    10 * 1024 * 1024 * 1024,
    ceil(var.busiest_records_per_second * local.record_bytes * var.query_scan_days * 24 * 3600),
  )

  # The compaction family, without a revision: RunTask starts its latest ACTIVE revision
  # (ECS API reference, RunTask, taskDefinition: "If a revision isn't specified, the
  # latest ACTIVE revision is used"; IAM authorises that revision's ARN). Terraform
  # registers no revision of it: a successful release does (pipeline/compaction_task.py),
  # with the released image, the compaction command and role. So a failed release or a
  # change to the service's task definition here never moves compaction off the image of
  # the last successful release.
  compaction_family     = "${var.task_family}-compaction"
  compaction_family_arn = "arn:${data.aws_partition.current.partition}:ecs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:task-definition/${local.compaction_family}"
}

################################################################################
# Glue catalog
################################################################################

resource "aws_glue_catalog_database" "this" {
  name        = local.database
  description = "Prediction capture of ${var.name}"
}

# One row per captured prediction (service/capture/records.py). Parts and merged objects
# are both gzip JSON Lines in the hour directories; compaction manifests start with `_`,
# which Athena skips (the saved queries read local.records, which counts a record held
# by both a part and a merged object once). Partition projection computes each hour's location from
# storage.location.template (Athena user guide, "Partition projection", date type).
resource "aws_glue_catalog_table" "predictions" {
  name          = "predictions"
  database_name = aws_glue_catalog_database.this.name
  description   = "Captured predictions of ${var.environment}, one row per batch row"
  table_type    = "EXTERNAL_TABLE"

  parameters = {
    "classification"                = "json"
    "compressionType"               = "gzip"
    "projection.enabled"            = "true"
    "projection.hour.type"          = "date"
    "projection.hour.format"        = var.hour_format
    "projection.hour.range"         = "${var.projection_start},NOW"
    "projection.hour.interval"      = "1"
    "projection.hour.interval.unit" = "HOURS"
    "storage.location.template"     = "${local.location}$${hour}/"
  }

  partition_keys {
    name    = "hour"
    type    = "string"
    comment = "UTC hour of the records, ${var.hour_format}"
  }

  storage_descriptor {
    location      = local.location
    input_format  = "org.apache.hadoop.mapred.TextInputFormat"
    output_format = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"

    ser_de_info {
      name                  = "json"
      serialization_library = "org.openx.data.jsonserde.JsonSerDe"
    }

    columns {
      name = "id"
      type = "string"
    }
    columns {
      name = "request_id"
      type = "string"
    }
    columns {
      name = "row"
      type = "int"
    }
    columns {
      name    = "time"
      type    = "string"
      comment = "ISO 8601 UTC with milliseconds"
    }
    columns {
      name = "env"
      type = "string"
    }
    columns {
      name = "route"
      type = "string"
    }
    columns {
      name = "model"
      type = "struct<name:string,version:string,sha256:string>"
    }
    columns {
      name = "prediction"
      type = "int"
    }
    columns {
      name = "scores"
      type = "array<double>"
    }
    columns {
      name = "latency_ms"
      type = "double"
    }
    columns {
      name = "inputs"
      type = "array<double>"
    }
    columns {
      name = "input_shape"
      type = "array<int>"
    }
  }
}

################################################################################
# Athena
################################################################################

resource "aws_athena_workgroup" "this" {
  name          = var.name
  description   = "Queries over the prediction capture of ${var.environment}"
  force_destroy = var.force_destroy

  configuration {
    enforce_workgroup_configuration    = true
    publish_cloudwatch_metrics_enabled = true
    bytes_scanned_cutoff_per_query     = local.bytes_scanned_cutoff

    result_configuration {
      output_location = "s3://${var.bucket_name}/athena-results/${var.environment}/"

      encryption_configuration {
        encryption_option = "SSE_S3"
      }
    }
  }

  tags = var.tags
}

locals {
  table = "\"${aws_glue_catalog_database.this.name}\".\"${aws_glue_catalog_table.predictions.name}\""
  # The rows of the hours the condition (%s) names, each record once: between a
  # compaction's commit and the deletion of its parts, an hour holds their records in
  # the parts and in the merged object; the merged copy ("$path", Athena's pseudo-column
  # naming a row's object) wins. pipeline/predictions/athena.py's deduplicated() is the
  # same clause, and a test compares them.
  records = <<-SQL
    (SELECT * FROM (SELECT *, row_number() OVER (
            PARTITION BY hour, id, request_id, time, "row" ORDER BY strpos("$path", '/compacted-') DESC) AS copy
        FROM ${local.table} WHERE %s) AS copies WHERE copy = 1) AS records
  SQL
  queries = {
    "predictions-per-class-per-hour" = {
      description = "Predicted classes per hour over the last day"
      sql         = <<-SQL
        SELECT hour, prediction, count(*) AS predictions
        FROM ${format(local.records, "hour >= date_format(current_timestamp - interval '1' day, '%Y/%m/%d/%H')")}
        GROUP BY hour, prediction
        ORDER BY hour, prediction
      SQL
    }
    "latency-p99-per-hour" = {
      description = "Request latency percentiles per hour over the last day (one row per request)"
      sql         = <<-SQL
        SELECT hour, count(*) AS requests,
               approx_percentile(latency_ms, 0.5) AS p50_ms,
               approx_percentile(latency_ms, 0.99) AS p99_ms
        FROM ${format(local.records, "hour >= date_format(current_timestamp - interval '1' day, '%Y/%m/%d/%H')")}
        WHERE "row" = 0
        GROUP BY hour
        ORDER BY hour
      SQL
    }
    "requests-by-model-version" = {
      description = "Requests per model version and hour over the last week: who answered after a release"
      sql         = <<-SQL
        SELECT hour, model.name AS model, model.version AS version, count(*) AS requests
        FROM ${format(local.records, "hour >= date_format(current_timestamp - interval '7' day, '%Y/%m/%d/%H')")}
        WHERE "row" = 0
        GROUP BY hour, model.name, model.version
        ORDER BY hour, version
      SQL
    }
  }
}

resource "aws_athena_named_query" "this" {
  for_each = local.queries

  name        = "${var.name}-${each.key}"
  description = each.value.description
  workgroup   = aws_athena_workgroup.this.id
  database    = aws_glue_catalog_database.this.name
  query       = each.value.sql
}

################################################################################
# Compaction task role
################################################################################

resource "aws_iam_role" "compaction" {
  name               = "${var.name}-compaction"
  description        = "The compaction task: merges capture/${var.environment}/ parts"
  assume_role_policy = var.task_trust_policy

  tags = var.tags
}

# pipeline/aws_calls.py, role "compaction": list the hours, read the parts, write the
# merged objects (multipart uploads, aborted when they fail) and manifests, delete the
# merged parts. s3:ListBucket on the environment's own bucket has no s3:prefix condition:
# S3 checks it, with no prefix in the request, before it answers 404 rather than 403 for a
# key that is gone (a part another run deleted after this one listed it; S3 API reference,
# GetObject), as for the deploy role.
data "aws_iam_policy_document" "compaction" {
  statement {
    sid       = "ListCapture"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]
  }

  statement {
    sid       = "MergeCapture"
    actions   = ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${var.bucket_arn}/${local.capture_prefix}/*"]
  }
}

resource "aws_iam_role_policy" "compaction" {
  name   = "compaction"
  role   = aws_iam_role.compaction.id
  policy = data.aws_iam_policy_document.compaction.json
}

################################################################################
# Schedule
################################################################################

data "aws_iam_policy_document" "scheduler_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "scheduler" {
  name               = "${var.name}-scheduler"
  description        = "EventBridge Scheduler: starts the compaction task of ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.scheduler_assume.json

  tags = var.tags
}

# EventBridge Scheduler user guide, "Set up the execution role" (ECS RunTask target):
# ecs:RunTask on the task definition, iam:PassRole on the roles the task runs with.
data "aws_iam_policy_document" "scheduler" {
  statement {
    sid       = "RunCompaction"
    actions   = ["ecs:RunTask"]
    resources = ["${local.compaction_family_arn}:*"]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [var.cluster_arn]
    }
  }

  statement {
    sid       = "PassTaskRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.compaction.arn, var.execution_role_arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "scheduler" {
  name   = "run-compaction"
  role   = aws_iam_role.scheduler.id
  policy = data.aws_iam_policy_document.scheduler.json
}

# The compaction family's latest revision, which carries its own command and role: the
# schedule passes no input (the Scheduler API reference, Target.Input, does not say how an
# ECS target would use it). Until the first successful release registers a revision,
# RunTask fails and Scheduler retries, then drops the event.
resource "aws_scheduler_schedule" "compaction" {
  #checkov:skip=CKV_AWS_297:The schedule holds a command line and two role ARNs, no data; Scheduler encrypts it with an AWS owned key, and a customer managed key would add a key and its policy for nothing to protect.
  name                         = "${var.name}-compaction"
  description                  = "Merge each finished hour of capture/${var.environment}/ into a few objects"
  schedule_expression          = var.compaction_schedule
  schedule_expression_timezone = "UTC"
  state                        = var.compaction_enabled ? "ENABLED" : "DISABLED"

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = var.cluster_arn
    role_arn = aws_iam_role.scheduler.arn

    ecs_parameters {
      task_definition_arn = local.compaction_family_arn
      launch_type         = "FARGATE"
      task_count          = 1

      network_configuration {
        subnets          = var.subnet_ids
        security_groups  = var.security_group_ids
        assign_public_ip = var.assign_public_ip
      }
    }

    retry_policy {
      maximum_retry_attempts       = 2
      maximum_event_age_in_seconds = 3600
    }
  }
}
