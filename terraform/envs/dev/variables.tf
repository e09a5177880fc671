################################################################################
# Environment
################################################################################

variable "environment" {
  description = "Environment name, the name of this root's directory (terraform/envs/<environment>). Names every resource, the GitHub environment and the S3 prefixes capture/<env>/ and deployments/<env>/."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,15}$", var.environment))
    error_message = "environment must be 2-16 lowercase letters and digits starting with a letter, e.g. dev, staging, prod (it names resources and S3 prefixes)."
  }
}

variable "project" {
  description = "Project name, the prefix of every name."
  type        = string
  default     = "onnx-ship"

  # It begins the load balancer's and target group's names, <project>-<environment>, which
  # take at most 32 letters, digits and hyphens, neither beginning nor ending with a hyphen
  # nor beginning with internal- (Elastic Load Balancing API reference, CreateLoadBalancer
  # and CreateTargetGroup: Name), and the bucket's, which with the account ID and region
  # takes at most 63 (S3 User Guide, "General purpose bucket naming rules").
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,13}[a-z0-9]$", var.project)) && !startswith("${var.project}-", "internal-")
    error_message = "project must be 2-15 lowercase letters, digits and hyphens, starting with a letter and ending with a letter or digit, and not internal (it begins the load balancer's name, at most 32 characters with the environment, and the bucket's)."
  }
}

variable "aws_region" {
  description = "Region of the environment."
  type        = string
  default     = "us-east-1"
}

variable "github_repository" {
  description = "GitHub repository whose <environment> GitHub environment may assume the deploy role: <owner>/<name>, or <owner>@<owner id>/<name>@<repository id> for a repository with immutable OIDC subject claims (terraform/README.md, Deploy roles)."
  type        = string
}

variable "state_bucket_name" {
  description = "Terraform state bucket (TF_STATE_BUCKET, terraform/bootstrap's state_bucket_name output): the deploy role reads this environment's outputs from it. nox -s plan|apply pass TF_STATE_BUCKET."
  type        = string
}

variable "promote_from_environments" {
  description = "Environments whose repository the deploy role may pull from to promote an image (prod: [\"dev\"])."
  type        = list(string)
  default     = []
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the bucket and repository with their content. Never in prod."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

################################################################################
# Network
################################################################################

variable "vpc_cidr_block" {
  description = "CIDR block of the environment's VPC."
  type        = string
  default     = "10.0.0.0/16"
}

variable "availability_zones" {
  description = "Zones (of aws_region) the load balancer and tasks spread over; 2 at least."
  type        = list(string)
}

variable "nat_gateways" {
  description = "\"per_az\" (prod: a zone outage cuts no zone off), \"shared\" (one NAT gateway), or \"none\" (dev: tasks in the public subnets with a public IP each, reachable from the load balancer only; no NAT bill)."
  type        = string
  default     = "shared"
}

variable "flow_log_traffic_type" {
  description = "What the VPC flow log records: REJECT (refused traffic only, the cheap default), ACCEPT or ALL."
  type        = string
  default     = "REJECT"
}

variable "ingress_cidr_blocks" {
  description = "Networks allowed to reach the load balancer; a release smoke-tests it from the deploy job's runner, whose address they must hold."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "metrics_scraper_security_group_ids" {
  description = "Security groups inside the VPC (a Prometheus scraper, e.g. the CloudWatch agent) that may reach the tasks' /metrics on the container port."
  type        = list(string)
  default     = []
}

################################################################################
# TLS and DNS
################################################################################

variable "certificate_arn" {
  description = "ACM certificate for domain_name: the load balancer then serves HTTPS on 443 and redirects port 80 there. Empty: plain HTTP (the endpoint_warning output says so)."
  type        = string
  default     = ""
}

variable "domain_name" {
  description = "Name clients call (the certificate's name), e.g. api.example.com; required with certificate_arn."
  type        = string
  default     = ""

  validation {
    condition     = var.certificate_arn == "" || var.domain_name != ""
    error_message = "domain_name must be set with certificate_arn: clients must call the name the certificate covers, not the load balancer's DNS name."
  }
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone where Terraform creates domain_name as an alias of the load balancer; empty to create the DNS record yourself (load_balancer_dns_name)."
  type        = string
  default     = ""

  validation {
    condition     = var.route53_zone_id == "" || var.domain_name != ""
    error_message = "route53_zone_id needs domain_name: the record to create in that zone."
  }
}

################################################################################
# Authentication
################################################################################

variable "require_authentication" {
  description = "Generate bearer tokens in Secrets Manager and inject them as API_TOKENS, so the service answers 401 without `Authorization: Bearer <token>`."
  type        = bool
  default     = true
}

variable "api_token_version" {
  description = "Raise to replace the API token with a fresh random one (README.md, \"Set-up: deploy roles, TLS, authentication\")."
  type        = number
  default     = 1
}

variable "load_balancer_idle_timeout_seconds" {
  description = "Seconds the load balancer keeps an idle connection open (1 to 4000; the service's keep-alive outlasts any of them)."
  type        = number
  default     = 60
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion."
  type        = bool
  default     = true
}

################################################################################
# Service
################################################################################

variable "task_cpu" {
  description = "Fargate task CPU units."
  type        = number
  default     = 512
}

variable "task_memory" {
  description = "Fargate task memory (MiB)."
  type        = number
  default     = 1024
}

variable "prediction_log_sample" {
  description = "Percentage of predictions captured to S3."
  type        = number
  default     = 100
}

variable "log_retention_days" {
  description = "Days service and flow logs are kept."
  type        = number
  default     = 30
}

variable "container_insights" {
  description = "CloudWatch Container Insights on the cluster (per-task metrics, billed as custom metrics): prod on, dev off."
  type        = bool
  default     = false
}

variable "capture_retention_days" {
  description = "Days captured predictions are kept in S3 before they expire (prod 400, dev 30)."
  type        = number
  default     = 400
}

variable "health_check_grace_period_seconds" {
  description = "Seconds a new task has before load balancer health checks count."
  type        = number
  default     = 60
}

variable "desired_count" {
  description = "Tasks started when the service is created (autoscaling owns the count afterwards)."
  type        = number
  default     = 1
}

variable "enable_autoscaling" {
  description = "Target-tracking autoscaling of the service. Leave on; only the moto-based tests turn it off."
  type        = bool
  default     = true
}

variable "min_capacity" {
  description = "Fewest tasks. 0, with max_capacity 0, pauses the environment (README.md, \"Pausing an environment\")."
  type        = number
  default     = 1

  # Application Auto Scaling refuses a minimum above the maximum (RegisterScalableTarget);
  # refused here, the plan says so before anything changes.
  validation {
    condition     = var.min_capacity >= 0 && var.min_capacity <= var.max_capacity && floor(var.min_capacity) == var.min_capacity
    error_message = "min_capacity must be a whole number from 0 to max_capacity (min_capacity = max_capacity = 0 pauses the environment: README.md, \"Pausing an environment\")."
  }
}

variable "max_capacity" {
  description = "Most tasks."
  type        = number
  default     = 2
}

variable "cpu_target_percent" {
  description = "Average CPU utilisation autoscaling aims for."
  type        = number
  default     = 60
}

variable "requests_per_target" {
  description = "Load balancer requests per task per minute autoscaling aims for: ALBRequestCountPerTarget is a one-minute Sum, so this is requests/s per task x 60. terraform.tfvars derives it from the benchmark's capacity."
  type        = number
  default     = 60000
}

################################################################################
# Alarms
################################################################################

variable "alarm_5xx_threshold" {
  description = "Target 5xx answers per minute that fire the 5xx alarm and roll a deployment back."
  type        = number
  default     = 5
}

variable "alarm_latency_p95_seconds" {
  description = "p95 response time (seconds) that fires the latency alarm and rolls a deployment back."
  type        = number
  default     = 0.5
}

variable "alarm_actions" {
  description = "ARNs (e.g. SNS topics) notified when an alarm changes state."
  type        = list(string)
  default     = []
}

variable "enable_deployment_alarms" {
  description = "Wire the alarms into the ECS deployment (rollback on alarm)."
  type        = bool
  default     = true
}
