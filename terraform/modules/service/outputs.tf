################################################################################
# Service
################################################################################

output "cluster_name" {
  description = "Name of the ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "cluster_arn" {
  description = "ARN of the ECS cluster."
  value       = aws_ecs_cluster.this.arn
}

output "service_name" {
  description = "Name of the ECS service."
  value       = aws_ecs_service.this.name
}

output "service_arn" {
  description = "ARN of the ECS service."
  value       = aws_ecs_service.this.id
}

################################################################################
# Task definition
################################################################################

output "task_family" {
  description = "Task definition family the pipeline registers revisions into."
  value       = aws_ecs_task_definition.this.family
}

output "task_definition_arn" {
  description = "Terraform's revision of the family: every release starts from it and overlays only the image and the model."
  value       = aws_ecs_task_definition.this.arn
}

output "capture_url" {
  description = "PREDICTION_LOG_URL of the container: the capture root; the service writes under <capture_url>/<environment>/."
  value       = local.capture_url
}

output "container_name" {
  description = "Name of the service's container in the task definition."
  value       = var.container_name
}

output "task_role_arn" {
  description = "Role of the running container (reads models/, writes its capture prefix)."
  value       = aws_iam_role.task.arn
}

output "execution_role_arn" {
  description = "Role ECS uses to pull the image and write logs."
  value       = aws_iam_role.execution.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the containers."
  value       = aws_cloudwatch_log_group.this.name
}

################################################################################
# Load balancer
################################################################################

output "load_balancer_dns_name" {
  description = "DNS name of the load balancer."
  value       = aws_lb.this.dns_name
}

output "endpoint_url" {
  description = "Base URL of the service (http://<load balancer DNS name>)."
  value       = "http://${aws_lb.this.dns_name}"
}

output "target_group_arn" {
  description = "Target group of the tasks."
  value       = aws_lb_target_group.this.arn
}

################################################################################
# Alarms
################################################################################

output "alarm_names" {
  description = "Alarms that roll a deployment back."
  value       = [for alarm in aws_cloudwatch_metric_alarm.deployment : alarm.alarm_name]
}
