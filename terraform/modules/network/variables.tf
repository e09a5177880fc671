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

  # The zone's last letter places its subnets' ranges (main.tf, zone_netnums).
  validation {
    condition = (
      alltrue([for az in var.availability_zones : can(regex("[a-z]$", az))]) &&
      length(distinct([for az in var.availability_zones : substr(az, -1, 1)])) == length(var.availability_zones)
    )
    error_message = "availability_zones must end in a letter each, no two in the same letter (e.g. [\"us-east-1a\", \"us-east-1b\"]): a zone's letter places its subnets' ranges."
  }
}

variable "nat_gateways" {
  description = "How tasks reach ECR and CloudWatch Logs: \"per_az\" (one NAT gateway per zone, survives a zone outage), \"shared\" (one NAT gateway), or \"none\" (tasks in the public subnets with a public IP each, no NAT bill)."
  type        = string
  default     = "shared"

  validation {
    condition     = contains(["none", "shared", "per_az"], var.nat_gateways)
    error_message = "nat_gateways must be \"none\", \"shared\" or \"per_az\"."
  }
}

################################################################################
# Flow logs
################################################################################

variable "flow_log_retention_days" {
  description = "Days VPC flow logs are kept."
  type        = number
  default     = 14
}

variable "flow_log_traffic_type" {
  description = "Traffic the flow log records: REJECT (what the security groups refused; the cheap default), ACCEPT or ALL."
  type        = string
  default     = "REJECT"

  validation {
    condition     = contains(["REJECT", "ACCEPT", "ALL"], var.flow_log_traffic_type)
    error_message = "flow_log_traffic_type must be REJECT, ACCEPT or ALL."
  }
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}
