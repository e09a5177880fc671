################################################################################
# VPC
################################################################################

output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

################################################################################
# Subnets
################################################################################

output "public_subnet_ids" {
  description = "Public subnets, one per zone: the load balancer lives here."
  value       = aws_subnet.public[*].id
}

output "private_subnet_ids" {
  description = "Private subnets, one per zone: the tasks live here."
  value       = aws_subnet.private[*].id
}

output "availability_zones" {
  description = "Zones the subnets are spread over."
  value       = local.azs
}
