################################################################################
# Bucket
################################################################################

variable "bucket_name" {
  description = "Name of the bucket; globally unique, so include the account id and environment."
  type        = string
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete a bucket that still holds objects. Keep false where data matters."
  type        = bool
  default     = false
}

################################################################################
# Lifecycle
################################################################################

variable "capture_retention_days" {
  description = "Days a capture part is kept before it expires (prediction records are telemetry, not an archive)."
  type        = number
  default     = 400

  validation {
    condition     = var.capture_retention_days >= 1
    error_message = "capture_retention_days must be 1 or more."
  }
}

variable "capture_infrequent_access_after_days" {
  description = "Days after which capture parts larger than 128 KB move to STANDARD_IA (30 at least); skipped when the retention is shorter."
  type        = number
  default     = 30

  # S3 moves no object to STANDARD_IA before it has been stored 30 days, and refuses a
  # rule that asks it to (S3 User Guide, "Transitioning objects using Amazon S3 Lifecycle";
  # the API reference's Transition says "greater than 30"): moto accepts any, and a real
  # apply would fail halfway.
  validation {
    condition     = var.capture_infrequent_access_after_days >= 30 && floor(var.capture_infrequent_access_after_days) == var.capture_infrequent_access_after_days
    error_message = "capture_infrequent_access_after_days must be a whole number of 30 or more: S3 moves no object to STANDARD_IA in its first 30 days."
  }
}

variable "capture_archive_after_days" {
  description = "Days after which capture parts larger than 128 KB move to GLACIER_IR; skipped when the retention is shorter."
  type        = number
  default     = 90
}

variable "athena_results_retention_days" {
  description = "Days an Athena query result (athena-results/) is kept; 7 is the longest Athena reuses a result."
  type        = number
  default     = 7
}

variable "noncurrent_version_retention_days" {
  description = "Days an overwritten or deleted object version is kept before it expires."
  type        = number
  default     = 90
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}
