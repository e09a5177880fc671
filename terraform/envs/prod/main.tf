# One environment, composed from the shared modules. This file is byte-for-byte
# the same in every environment; what differs lives in terraform.tfvars and
# backend.hcl.

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = local.tags
  }
}

data "aws_caller_identity" "current" {}

# aws, aws-cn or aws-us-gov: ARNs built here name the region's partition.
data "aws_partition" "current" {}

# Created once per account by terraform/bootstrap.
data "aws_iam_openid_connect_provider" "github" {
  url = "https://token.actions.githubusercontent.com"
}

locals {
  name        = "${var.project}-${var.environment}"
  account_id  = data.aws_caller_identity.current.account_id
  bucket_name = "${local.name}-${local.account_id}-${var.aws_region}"
  state_key   = "${var.project}/${var.environment}/terraform.tfstate"

  fixed_once_applied = {
    aws_region     = var.aws_region
    name           = local.name
    vpc_cidr_block = var.vpc_cidr_block
  }

  tags = merge(var.tags, {
    Project     = var.project
    Environment = var.environment
    ManagedBy   = "terraform"
  })

  # Repositories of the environments this one promotes images from (prod: dev).
  promote_from_repository_arns = [
    for source in var.promote_from_environments :
    "arn:${data.aws_partition.current.partition}:ecr:${var.aws_region}:${local.account_id}:repository/${var.project}-${source}"
  ]
}

# What an environment is built in and named by, fixed once applied. A new region finds
# none of the environment's resources there (the provider reads each by its ID in the
# configured region): the plan builds a second environment and leaves the first one
# running, and billing, outside the state, and renames the bucket, which replaces it
# (force_destroy: with everything in it). A new project or environment name replaces
# every named resource, bucket and repository included, and a new VPC range the VPC
# under a load balancer that cannot change VPC. So the plan stops here instead
# (README.md, "Changing a live environment"). ignore_changes keeps the values of the
# first apply; `terraform destroy` with them still tears the environment down.
resource "terraform_data" "fixed_once_applied" {
  input = local.fixed_once_applied

  lifecycle {
    ignore_changes = [input]

    postcondition {
      condition     = self.output == local.fixed_once_applied
      error_message = "This environment was applied as ${jsonencode(self.output)}; the configuration now says ${jsonencode(local.fixed_once_applied)}. These are fixed once applied: a change would build a second environment (another region), or replace the bucket, the repository and the load balancer (another name or VPC range). Put the old values back, or tear the environment down and apply it anew (README.md, \"Changing a live environment\")."
    }
  }
}

module "storage" {
  source = "../../modules/storage"

  bucket_name            = local.bucket_name
  force_destroy          = var.force_destroy
  capture_retention_days = var.capture_retention_days
}

module "registry" {
  source = "../../modules/registry"

  name         = local.name
  force_delete = var.force_destroy
}

module "network" {
  source = "../../modules/network"

  name                    = local.name
  cidr_block              = var.vpc_cidr_block
  availability_zones      = var.availability_zones
  nat_gateways            = var.nat_gateways
  flow_log_retention_days = var.log_retention_days
  flow_log_traffic_type   = var.flow_log_traffic_type
}

module "service" {
  source = "../../modules/service"

  name        = local.name
  environment = var.environment

  cpu                   = var.task_cpu
  memory                = var.task_memory
  prediction_log_sample = var.prediction_log_sample
  log_retention_days    = var.log_retention_days
  container_insights    = var.container_insights

  require_authentication = var.require_authentication
  api_token_version      = var.api_token_version
  # A torn-down dev (force_destroy) can be rebuilt at once under the same secret name.
  secret_recovery_window_days = var.force_destroy ? 0 : 30

  bucket_name    = module.storage.bucket_name
  bucket_arn     = module.storage.bucket_arn
  repository_arn = module.registry.repository_arn

  vpc_id                             = module.network.vpc_id
  public_subnet_ids                  = module.network.public_subnet_ids
  task_subnet_ids                    = module.network.task_subnet_ids
  assign_public_ip                   = module.network.tasks_need_public_ip
  ingress_cidr_blocks                = var.ingress_cidr_blocks
  metrics_scraper_security_group_ids = var.metrics_scraper_security_group_ids
  deletion_protection                = var.deletion_protection

  certificate_arn = var.certificate_arn
  domain_name     = var.domain_name
  route53_zone_id = var.route53_zone_id

  load_balancer_idle_timeout_seconds = var.load_balancer_idle_timeout_seconds

  desired_count                     = var.desired_count
  enable_autoscaling                = var.enable_autoscaling
  min_capacity                      = var.min_capacity
  max_capacity                      = var.max_capacity
  cpu_target_percent                = var.cpu_target_percent
  requests_per_target               = var.requests_per_target
  health_check_grace_period_seconds = var.health_check_grace_period_seconds

  alarm_5xx_threshold       = var.alarm_5xx_threshold
  alarm_latency_p95_seconds = var.alarm_latency_p95_seconds
  alarm_actions             = var.alarm_actions
  enable_deployment_alarms  = var.enable_deployment_alarms
}

module "ci" {
  source = "../../modules/ci"

  name              = local.name
  environment       = var.environment
  github_repository = var.github_repository
  # pipeline.yml deploys <env> from pushes to the branch <env>.
  github_branch     = var.environment
  oidc_provider_arn = data.aws_iam_openid_connect_provider.github.arn

  repository_arn       = module.registry.repository_arn
  pull_repository_arns = local.promote_from_repository_arns
  service_arn          = module.service.service_arn
  task_families        = [module.service.task_family, module.capture_catalog.compaction_task_family]
  task_role_arn        = module.service.task_role_arn
  execution_role_arn   = module.service.execution_role_arn
  compaction_role_arn  = module.capture_catalog.compaction_role_arn
  api_token_secret_arn = module.service.api_token_secret_arn
  bucket_arn           = module.storage.bucket_arn
  state_bucket_name    = var.state_bucket_name
  state_key            = local.state_key
}

module "capture_catalog" {
  source = "../../modules/capture_catalog"

  name          = local.name
  environment   = var.environment
  bucket_name   = module.storage.bucket_name
  bucket_arn    = module.storage.bucket_arn
  force_destroy = var.force_destroy
  # Each task at max_capacity answering the requests a second its scaling aims for.
  busiest_records_per_second = var.max_capacity * var.requests_per_target / 60

  cluster_arn        = module.service.cluster_arn
  task_family        = module.service.task_family
  execution_role_arn = module.service.execution_role_arn
  task_trust_policy  = module.service.task_trust_policy
  subnet_ids         = module.network.task_subnet_ids
  security_group_ids = [module.service.task_security_group_id]
  assign_public_ip   = module.network.tasks_need_public_ip
}
