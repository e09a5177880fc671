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
  description = "Number of most recent images kept; older ones expire. Keep it above the releases you may roll back to."
  type        = number
  default     = 50
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}
