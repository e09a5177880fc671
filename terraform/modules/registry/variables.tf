################################################################################
# Repository
################################################################################

variable "name" {
  description = "Name of the ECR repository."
  type        = string
}

variable "force_delete" {
  description = "Let `terraform destroy` delete the repository while it still holds images."
  type        = bool
  default     = false
}

################################################################################
# Lifecycle
################################################################################

variable "untagged_image_retention_days" {
  description = "Days an untagged image is kept."
  type        = number
  default     = 7
}

variable "max_image_count" {
  description = "Number of most recent images kept of every push, released or not; older ones expire unless they are among the max_verified_image_count most recent released images."
  type        = number
  default     = 50
}

# At one to three releases a working day (20 to 60 a month), 200 keeps three months or
# more of releases to promote or roll back to.
variable "max_verified_image_count" {
  description = "Number of most recent released (verified-) images kept, whatever was pushed since: what promotion ships and a rollback returns to."
  type        = number
  default     = 200
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}
