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
}

variable "aws_region" {
  description = "Region of the environment."
  type        = string
  default     = "us-east-1"
}

variable "github_repository" {
  description = "GitHub repository (<owner>/<name>) whose <environment> GitHub environment may assume the deploy role."
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

variable "one_nat_gateway_per_az" {
  description = "One NAT gateway per zone (prod) instead of one shared (dev)."
  type        = bool
  default     = false
}

variable "ingress_cidr_blocks" {
  description = "Networks allowed to reach the load balancer."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "load_balancer_idle_timeout_seconds" {
  description = "Seconds the load balancer keeps an idle connection open (the service's keep-alive follows it)."
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
  description = "Fewest tasks."
  type        = number
  default     = 1
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
  description = "Requests per task per minute autoscaling aims for."
  type        = number
  default     = 1000
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
