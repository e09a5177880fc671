################################################################################
# VPC
################################################################################

variable "name" {
  description = "Name prefix for the VPC and everything in it."
  type        = string
}

variable "cidr_block" {
  description = "CIDR block of the VPC (a /16 leaves room for the /24 subnets)."
  type        = string
  default     = "10.0.0.0/16"
}

################################################################################
# Subnets
################################################################################

variable "az_count" {
  description = "Number of availability zones, one public and one private subnet in each. The load balancer needs 2."
  type        = number
  default     = 2

  validation {
    condition     = var.az_count >= 2
    error_message = "az_count must be 2 or more: an Application Load Balancer needs subnets in two availability zones."
  }
}

variable "one_nat_gateway_per_az" {
  description = "One NAT gateway per zone (survives a zone outage) instead of one shared NAT gateway (cheaper)."
  type        = bool
  default     = false
}

################################################################################
# Flow logs
################################################################################

variable "flow_log_retention_days" {
  description = "Days VPC flow logs are kept."
  type        = number
  default     = 14
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}
