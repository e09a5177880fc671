################################################################################
# Naming
################################################################################

variable "name" {
  description = "Name prefix of every resource (onnx-ship-<environment>)."
  type        = string
}

variable "environment" {
  description = "Environment name; its capture prefix is capture/<environment>/."
  type        = string
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

################################################################################
# Capture and catalog
################################################################################

variable "bucket_name" {
  description = "Bucket holding capture/<environment>/ (and athena-results/<environment>/, the workgroup's result location)."
  type        = string
}

variable "bucket_arn" {
  description = "ARN of that bucket."
  type        = string
}

variable "hour_format" {
  description = "The capture's hour directories as a Java date pattern (projection.hour.format); service/capture/partformat.py's projection_format() is the source and a test compares them."
  type        = string
  default     = "yyyy/MM/dd/HH"
}

variable "projection_start" {
  description = "First hour partition projection considers, in hour_format."
  type        = string
  default     = "2024/01/01/00"
}

variable "busiest_records_per_second" {
  description = "The most prediction records a second the environment captures: its tasks at max_capacity, each at the request rate its scaling aims for (a record per example: a single-example request writes one). 0 for a paused environment."
  type        = number

  validation {
    condition     = var.busiest_records_per_second >= 0
    error_message = "busiest_records_per_second must be 0 or more: max_capacity x requests_per_target / 60."
  }
}

variable "query_scan_days" {
  description = "Days of capture at busiest_records_per_second (about 100 gzip bytes a record) one Athena query may scan before the workgroup cancels it (BytesScannedCutoffPerQuery; 10 GB at least). 7: the widest saved query's window."
  type        = number
  default     = 7

  validation {
    condition     = var.query_scan_days > 0
    error_message = "query_scan_days must be above 0."
  }
}

variable "force_destroy" {
  description = "Let terraform destroy the workgroup with its saved queries and history."
  type        = bool
  default     = false
}

################################################################################
# Compaction schedule
################################################################################

variable "compaction_schedule" {
  description = "When the compaction task runs (EventBridge Scheduler expression, UTC): past the hour, after the previous hour settled."
  type        = string
  default     = "cron(15 * * * ? *)"
}

variable "compaction_enabled" {
  description = "Whether the schedule starts the compaction task."
  type        = bool
  default     = true
}

variable "cluster_arn" {
  description = "ECS cluster the compaction task runs in."
  type        = string
}

variable "task_family" {
  description = "The service's task family; the schedule runs the latest revision of <task_family>-compaction, which only a successful release registers (pipeline/compaction_task.py)."
  type        = string
}

variable "execution_role_arn" {
  description = "The service's execution role (image pull, logs), passed to the task."
  type        = string
}

variable "task_trust_policy" {
  description = "Trust policy of the compaction task's role: the service's task role's (ECS tasks of this account only), the service module's task_trust_policy output."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets of the compaction task."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups of the compaction task (the tasks' own: HTTPS out only)."
  type        = list(string)
}

variable "assign_public_ip" {
  description = "Whether the task needs a public IP to reach AWS (no NAT gateway)."
  type        = bool
}
