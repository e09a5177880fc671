# The names the deploy reads (`terraform output -json`): identical in every environment.

################################################################################
# Environment
################################################################################

output "environment" {
  description = "Environment name."
  value       = var.environment
}

output "aws_region" {
  description = "Region of the environment."
  value       = var.aws_region
}

output "deploy_role_arn" {
  description = "Role GitHub Actions assumes in the <environment> GitHub environment."
  value       = module.ci.deploy_role_arn
}

output "deploy_role_subject" {
  description = "The only OIDC subject the deploy role trusts: the repository's customised subject for pipeline.yml on the <environment> branch in the <environment> GitHub environment."
  value       = module.ci.github_subject
}

################################################################################
# Service
################################################################################

output "cluster_name" {
  description = "ECS cluster."
  value       = module.service.cluster_name
}

output "service_name" {
  description = "ECS service."
  value       = module.service.service_name
}

output "task_family" {
  description = "Task definition family the pipeline registers revisions into."
  value       = module.service.task_family
}

output "task_definition_arn" {
  description = "Terraform's revision of the task family: what every release starts from (it overlays the image and the model)."
  value       = module.service.task_definition_arn
}

output "container_name" {
  description = "Container name in the task definition."
  value       = module.service.container_name
}

output "task_role_arn" {
  description = "Task role for new task definition revisions."
  value       = module.service.task_role_arn
}

output "execution_role_arn" {
  description = "Execution role for new task definition revisions."
  value       = module.service.execution_role_arn
}

output "log_group_name" {
  description = "CloudWatch log group of the containers."
  value       = module.service.log_group_name
}

output "endpoint_url" {
  description = "Base URL of the service as served: https://<domain_name> with a certificate, else http://<load balancer DNS name>."
  value       = module.service.endpoint_url
}

output "endpoint_warning" {
  description = "Set when the endpoint is plain HTTP (no certificate_arn): bearer tokens and predictions would cross the internet unencrypted. Null when it serves HTTPS."
  value       = module.service.endpoint_warning
}

output "load_balancer_dns_name" {
  description = "DNS name of the load balancer: the target of domain_name's record when Terraform does not create it."
  value       = module.service.load_balancer_dns_name
}

output "api_token_secret_arn" {
  description = "Secrets Manager secret holding the bearer tokens the service accepts (API_TOKENS; the first is the one the pipeline sends), or null when require_authentication is off."
  value       = module.service.api_token_secret_arn
}

output "alarm_names" {
  description = "Alarms that roll a deployment back."
  value       = module.service.alarm_names
}

################################################################################
# Registry
################################################################################

output "ecr_repository_url" {
  description = "Repository to push the image to."
  value       = module.registry.repository_url
}

output "ecr_repository_name" {
  description = "Name of that repository."
  value       = module.registry.repository_name
}

output "promote_from_environments" {
  description = "Environments whose verified images this one ships instead of building (prod: [\"dev\"])."
  value       = var.promote_from_environments
}

output "promote_from_repository_names" {
  description = "Repositories the deploy may pull a verified image from (prod: dev's)."
  value       = [for source in var.promote_from_environments : "${var.project}-${source}"]
}

################################################################################
# Storage
################################################################################

output "bucket_name" {
  description = "Environment bucket."
  value       = module.storage.bucket_name
}

output "capture_url" {
  description = "Prediction capture root (the container's PREDICTION_LOG_URL); the service writes under <capture_url>/<environment>/."
  value       = module.service.capture_url
}

output "deployments_url" {
  description = "Deployment records root; the pipeline writes under <deployments_url>/<environment>/."
  value       = "s3://${module.storage.bucket_name}/deployments"
}

output "models_url" {
  description = "Model prefix the tasks may read."
  value       = "s3://${module.storage.bucket_name}/models"
}

################################################################################
# Capture catalog
################################################################################

output "glue_database" {
  description = "Glue database of the capture table (nox -s report -- <env> --engine athena)."
  value       = module.capture_catalog.glue_database
}

output "glue_table" {
  description = "Glue table over capture/<environment>/."
  value       = module.capture_catalog.glue_table
}

output "athena_workgroup" {
  description = "Athena workgroup for queries over the capture."
  value       = module.capture_catalog.athena_workgroup
}

output "compaction_role_arn" {
  description = "Task role of the scheduled compaction task."
  value       = module.capture_catalog.compaction_role_arn
}

output "compaction_task_family" {
  description = "Task family the compaction schedule runs; a successful release registers its image there."
  value       = module.capture_catalog.compaction_task_family
}

output "scheduler_role_arn" {
  description = "Role EventBridge Scheduler assumes to start the compaction task."
  value       = module.capture_catalog.scheduler_role_arn
}
