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

# An ID exists as soon as its subnet does, long before the subnet can carry traffic:
# each subnet output also waits for the routes its users need, so that a first
# `terraform apply` never builds on a subnet without them (Terraform language, output
# block, depends_on). An internet-facing load balancer in a VPC without an attached
# internet gateway is refused (InvalidSubnet), and CloudFormation names a load balancer
# among the resources that must wait for the gateway attachment (CloudFormation
# template reference, "DependsOn attribute", "When a DependsOn attribute is required").
output "public_subnet_ids" {
  description = "Public subnets, one per zone: the load balancer lives here. Ready once the internet gateway is attached and the public route table holds its default route."
  value       = aws_subnet.public[*].id

  depends_on = [
    aws_internet_gateway.this,
    aws_route.public_internet,
    aws_route_table_association.public,
  ]
}

output "private_subnet_ids" {
  description = "Private subnets, one per zone: the tasks live here."
  value       = aws_subnet.private[*].id
}

# A task pulls its image from ECR and reads its secret the moment it starts: without
# its default route (NAT, or the internet gateway when nat_gateways is "none") and the
# S3 endpoint's routes, the first tasks fail with no route to the registry.
output "task_subnet_ids" {
  description = "Where the tasks run: the private subnets behind NAT, or the public subnets when nat_gateways is \"none\". Ready once their default route and the S3 endpoint are in place."
  value       = local.tasks_in_public_subnets ? aws_subnet.public[*].id : aws_subnet.private[*].id

  depends_on = [
    aws_internet_gateway.this,
    aws_route.public_internet,
    aws_route_table_association.public,
    aws_route.private_nat,
    aws_route_table_association.private,
    aws_vpc_endpoint.s3,
  ]
}

output "tasks_need_public_ip" {
  description = "True when the tasks run in the public subnets (no NAT gateway): each needs a public IP to reach ECR and CloudWatch Logs."
  value       = local.tasks_in_public_subnets
}

output "availability_zones" {
  description = "Zones the subnets are spread over."
  value       = local.azs
}
