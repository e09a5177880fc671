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

variable "availability_zones" {
  description = "Zones to spread over, named explicitly so the set never changes behind your back; one public and one private subnet in each."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2
    error_message = "availability_zones needs 2 zones or more: an Application Load Balancer needs subnets in two availability zones."
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
