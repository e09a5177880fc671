################################################################################
# Service
################################################################################

variable "name" {
  description = "Name of the cluster, service, task family, load balancer and roles (e.g. onnx-ship-dev)."
  type        = string
}

variable "environment" {
  description = "Environment name; decides the capture prefix capture/<environment>/ the task may write."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,15}$", var.environment))
    error_message = "environment must be 2-16 lowercase letters or digits, starting with a letter (e.g. dev, prod), as the service's APP_ENV."
  }
}

variable "desired_count" {
  description = "Tasks started when the service is created; afterwards autoscaling owns the count."
  type        = number
  default     = 1
}

variable "health_check_grace_period_seconds" {
  description = "Seconds a new task has to download and load the model before load balancer health checks count."
  type        = number
  default     = 60
}

variable "container_insights" {
  description = "CloudWatch Container Insights on the cluster (per-task metrics, billed as custom metrics): on in prod, off in dev."
  type        = bool
  default     = true
}

variable "enable_deployment_alarms" {
  description = "Wire the 5xx and latency alarms to the deployment so a firing alarm rolls it back."
  type        = bool
  default     = true
}

################################################################################
# Task definition
################################################################################

variable "placeholder_image" {
  description = "Public image running placeholder.py in Terraform's task definition until the first release (which replaces image and command); it must exist, so the service's first deployment completes."
  type        = string
  default     = "public.ecr.aws/docker/library/python:3.11-slim"
}

variable "container_name" {
  description = "Name of the container in the task definition (the pipeline looks it up by this name)."
  type        = string
  default     = "server"
}

variable "container_port" {
  description = "Port the service listens on inside the container."
  type        = number
  default     = 8080
}

variable "container_environment" {
  description = "Extra environment variables of the first revision, merged over the computed ones (APP_ENV, PREDICTION_LOG_URL, ...)."
  type        = map(string)
  default     = {}
}

variable "stop_timeout_seconds" {
  description = "Seconds between SIGTERM and SIGKILL when a task stops (the container's stopTimeout); the service fits its drain and capture flush inside."
  type        = number
  default     = 120

  validation {
    condition     = var.stop_timeout_seconds >= 10 && var.stop_timeout_seconds <= 120
    error_message = "stop_timeout_seconds must be 10-120: Fargate allows at most 120, and the service needs 10 to drain and flush."
  }
}

variable "prediction_log_sample" {
  description = "Percentage of predictions captured to S3 (0-100)."
  type        = number
  default     = 100
}

variable "cpu" {
  description = "Fargate task CPU units (256 = 0.25 vCPU); the task runs one uvicorn worker per vCPU (WEB_CONCURRENCY), one below 1,024."
  type        = number
  default     = 512
}

variable "memory" {
  description = "Fargate task memory in MiB (must fit the CPU size)."
  type        = number
  default     = 1024

  # Fargate runs only these sizes; RegisterTaskDefinition refuses any other pair ("No
  # Fargate configuration exists for given values"): ECS developer guide, "Troubleshoot
  # Amazon ECS task definition invalid CPU or memory errors". Refused here, the plan says
  # so before anything changes.
  validation {
    condition = contains(lookup({
      256   = [512, 1024, 2048]
      512   = range(1024, 4097, 1024)
      1024  = range(2048, 8193, 1024)
      2048  = range(4096, 16385, 1024)
      4096  = range(8192, 30721, 1024)
      8192  = range(16384, 61441, 4096)
      16384 = range(32768, 122881, 8192)
    }, var.cpu, []), var.memory)
    error_message = "Fargate has no task of ${var.cpu} CPU units with ${var.memory} MiB (task_cpu and task_memory): use 256 with 512, 1024 or 2048; 512 with 1024 to 4096; 1024 with 2048 to 8192; 2048 with 4096 to 16384; 4096 with 8192 to 30720 (each in steps of 1024); 8192 with 16384 to 61440 in steps of 4096; 16384 with 32768 to 122880 in steps of 8192."
  }
}

variable "log_retention_days" {
  description = "Days the service's CloudWatch logs are kept."
  type        = number
  default     = 30
}

################################################################################
# Storage and registry (from the storage and registry modules)
################################################################################

variable "bucket_name" {
  description = "Bucket holding models/ and capture/."
  type        = string
}

variable "bucket_arn" {
  description = "ARN of that bucket."
  type        = string
}

variable "repository_arn" {
  description = "ECR repository the execution role may pull from."
  type        = string
}

################################################################################
# Load balancer and network
################################################################################

variable "vpc_id" {
  description = "VPC of the service."
  type        = string
}

variable "public_subnet_ids" {
  description = "Subnets of the load balancer (two zones at least)."
  type        = list(string)
}

variable "task_subnet_ids" {
  description = "Subnets of the tasks: private ones behind NAT, or public ones (with assign_public_ip) where there is no NAT gateway."
  type        = list(string)
}

variable "assign_public_ip" {
  description = "Give each task a public IP: only for tasks in public subnets without NAT (their security group still admits the load balancer alone)."
  type        = bool
  default     = false
}

variable "metrics_scraper_security_group_ids" {
  description = "Security groups of Prometheus scrapers inside the VPC (e.g. the CloudWatch agent's service) allowed to reach the tasks' container port for /metrics."
  type        = list(string)
  default     = []
}

variable "ingress_cidr_blocks" {
  description = "Networks allowed to reach the load balancer (port 80, and 443 with a certificate)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "load_balancer_idle_timeout_seconds" {
  description = "Seconds the load balancer keeps an idle connection open (1 to 4000); the service keeps its own open longer than the most this allows (4005 s), so a change here never needs a release."
  type        = number
  default     = 60

  validation {
    condition     = var.load_balancer_idle_timeout_seconds >= 1 && var.load_balancer_idle_timeout_seconds <= 4000
    error_message = "load_balancer_idle_timeout_seconds must be 1 to 4000 (an Application Load Balancer's range)."
  }
}

variable "health_check_path" {
  description = "Readiness route the target group checks."
  type        = string
  default     = "/v2/health/ready"
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion (turn off to destroy the environment)."
  type        = bool
  default     = true
}

################################################################################
# TLS and DNS
################################################################################

variable "certificate_arn" {
  description = "ACM certificate (in the load balancer's region) for an HTTPS listener on 443, port 80 then redirecting there; empty for plain HTTP on 80."
  type        = string
  default     = ""
}

variable "domain_name" {
  description = "Name clients use for the endpoint (the certificate's name); endpoint_url uses it when set, else the load balancer's DNS name."
  type        = string
  default     = ""
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone in which to create domain_name as an alias of the load balancer; empty to point your DNS at it yourself."
  type        = string
  default     = ""
}

variable "ssl_policy" {
  description = "Security policy of the HTTPS listener: TLS 1.3 and 1.2 with forward-secret ciphers only, and hybrid post-quantum key exchange (ML-KEM) for clients that offer it, classical for the rest; the ELB console's default and AWS's recommendation (ELB guide, \"Security policies for your Application Load Balancer\")."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09"
}

################################################################################
# Authentication
################################################################################

variable "require_authentication" {
  description = "Create the API tokens secret and inject it as API_TOKENS, so the service asks for `Authorization: Bearer <token>`."
  type        = bool
  default     = true
}

variable "api_token_version" {
  description = "Version of the generated API token: raise it to replace the token with a fresh random one (Terraform writes it through a write-only argument, never into the state)."
  type        = number
  default     = 1
}

variable "secret_recovery_window_days" {
  description = "Days a deleted API tokens secret can be restored (0 deletes at once, so a torn-down dev can be rebuilt under the same name; 7-30 otherwise)."
  type        = number
  default     = 30

  validation {
    condition     = var.secret_recovery_window_days == 0 || (var.secret_recovery_window_days >= 7 && var.secret_recovery_window_days <= 30)
    error_message = "secret_recovery_window_days must be 0 or 7-30 (Secrets Manager's DeleteSecret)."
  }
}

################################################################################
# Alarms
################################################################################

variable "alarm_5xx_threshold" {
  description = "Target 5xx answers per minute above which the 5xx alarm fires (two minutes in a row)."
  type        = number
  default     = 5
}

variable "alarm_latency_p95_seconds" {
  description = "p95 target response time in seconds above which the latency alarm fires (three minutes in a row)."
  type        = number
  default     = 0.5
}

variable "alarm_actions" {
  description = "ARNs notified when an alarm changes state (e.g. an SNS topic); empty for none."
  type        = list(string)
  default     = []
}

################################################################################
# Autoscaling
################################################################################

variable "enable_autoscaling" {
  description = "Scale the service with target tracking. Only the moto-based tests turn it off (moto's Application Auto Scaling cannot list tags)."
  type        = bool
  default     = true
}

variable "min_capacity" {
  description = "Fewest tasks autoscaling keeps."
  type        = number
  default     = 1
}

variable "max_capacity" {
  description = "Most tasks autoscaling starts."
  type        = number
  default     = 4
}

variable "cpu_target_percent" {
  description = "Average CPU utilisation autoscaling aims for."
  type        = number
  default     = 60
}

variable "requests_per_target" {
  description = "Load balancer requests per task per minute autoscaling aims for (ALBRequestCountPerTarget is a one-minute Sum: requests/s per task x 60)."
  type        = number
  default     = 60000
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}
