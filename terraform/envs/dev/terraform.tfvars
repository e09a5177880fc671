environment = "dev"

# The repository whose `dev` GitHub environment may deploy here: set yours. With its IDs,
# "<owner>@<owner id>/<name>@<repository id>", if it has immutable OIDC subject claims
# (every repository created, renamed or transferred since 2026-07-15): terraform/README.md.
github_repository = "example-org/onnx-ship"

vpc_cidr_block     = "10.10.0.0/16"
availability_zones = ["us-east-1a", "us-east-1b"]
# Cost profile: no NAT gateway. The task runs in a public subnet with a public IP
# ($3.65/month) and a security group only the load balancer reaches, instead of a
# NAT gateway ($32.85/month plus $0.045/GB): README.md, "What it costs".
nat_gateways        = "none"
container_insights  = false
deletion_protection = false
force_destroy       = true

# TLS: uncomment with a certificate issued in ACM for domain_name (README.md, "Set-up: deploy roles, TLS, authentication").
# certificate_arn = "arn:aws:acm:us-east-1:<account>:certificate/<id>"
# domain_name     = "dev.api.example.com"
# route53_zone_id = "<hosted zone id>"   # optional: Terraform creates the alias record

task_cpu    = 512
task_memory = 1024

desired_count = 1
min_capacity  = 1
max_capacity  = 2

cpu_target_percent = 70
# Measured (README, "Performance", capture on, c=16): 5,505 and 10,081 requests/s per vCPU
# with p99 under 15 ms in the two quiet runs (V2 JSON single, the slowest single-image
# row); the slower run is the basis. 0.5 vCPU -> 2,750/s; aim at under half of that for
# headroom (a Fargate vCPU is not the benchmark's core, and a new task takes a minute or
# two to serve): 1,250/s. ALBRequestCountPerTarget is a one-minute Sum, so the target is
# 1,250 x 60 per task per minute.
requests_per_target = 75000

log_retention_days                = 14
health_check_grace_period_seconds = 60
capture_retention_days            = 30

alarm_5xx_threshold       = 5
alarm_latency_p95_seconds = 1
