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

output "task_security_group_id" {
  description = "Security group of the service's tasks (HTTPS out only); tasks run beside the service (compaction) use it too."
  value       = aws_security_group.tasks.id
}

output "task_role_arn" {
  description = "Role of the running container (reads models/, writes its capture prefix)."
  value       = aws_iam_role.task.arn
}

output "task_trust_policy" {
  description = "Trust policy of a role ECS tasks of this account assume: the task role's, and the compaction task's role's (capture_catalog)."
  value       = data.aws_iam_policy_document.task_assume.json
}

output "execution_role_arn" {
  description = "Role ECS uses to pull the image, write logs and read the API tokens."
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
  description = "Base URL of the service as served: https://<domain_name> with a certificate, else http://<load balancer DNS name>."
  value       = local.endpoint_url
}

output "endpoint_warning" {
  description = "Why the endpoint is not safe to call over the internet, or null when it serves HTTPS."
  value       = local.tls ? null : "UNENCRYPTED: ${local.endpoint_url} is plain HTTP, so bearer tokens and predictions cross the internet in clear text. Set certificate_arn and domain_name (README.md, \"Set-up: deploy roles, TLS, authentication\") before sending it anything real."
}

output "https_listener_arn" {
  description = "HTTPS listener on 443 (null without a certificate)."
  value       = local.tls ? aws_lb_listener.https[0].arn : null
}

output "http_listener_arn" {
  description = "Listener on 80: forwards to the tasks without a certificate, redirects to 443 with one."
  value       = aws_lb_listener.http.arn
}

output "target_group_arn" {
  description = "Target group of the tasks."
  value       = aws_lb_target_group.this.arn
}

################################################################################
# Authentication
################################################################################

output "api_token_secret_arn" {
  description = "Secrets Manager secret holding the bearer tokens the service accepts (API_TOKENS; the first is the pipeline's), or null without authentication."
  value       = local.api_token_secret_arn
}

################################################################################
# Alarms
################################################################################

output "alarm_names" {
  description = "Alarms that roll a deployment back."
  value       = [for alarm in aws_cloudwatch_metric_alarm.deployment : alarm.alarm_name]
}
