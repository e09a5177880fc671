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

output "task_subnet_ids" {
  description = "Where the tasks run: the private subnets behind NAT, or the public subnets when nat_gateways is \"none\"."
  value       = local.tasks_in_public_subnets ? aws_subnet.public[*].id : aws_subnet.private[*].id
}

output "tasks_need_public_ip" {
  description = "True when the tasks run in the public subnets (no NAT gateway): each needs a public IP to reach ECR and CloudWatch Logs."
  value       = local.tasks_in_public_subnets
}

output "availability_zones" {
  description = "Zones the subnets are spread over."
  value       = local.azs
}
