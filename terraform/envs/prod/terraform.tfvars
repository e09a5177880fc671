environment = "prod"

# The repository whose `prod` GitHub environment may deploy here: set yours. With its IDs,
# "<owner>@<owner id>/<name>@<repository id>", if it has immutable OIDC subject claims
# (every repository created, renamed or transferred since 2026-07-15): terraform/README.md.
github_repository = "example-org/onnx-ship"

# prod ships the image dev built and verified: its deploy role may pull from dev's repository.
promote_from_environments = ["dev"]

vpc_cidr_block     = "10.20.0.0/16"
availability_zones = ["us-east-1a", "us-east-1b"]
# Cost profile: one NAT gateway per zone, so a zone outage cuts no task off from ECR
# and CloudWatch Logs; tasks stay in private subnets without public IPs.
nat_gateways        = "per_az"
container_insights  = true
deletion_protection = true
force_destroy       = false

# TLS: set both with a certificate issued in ACM for domain_name (README.md, "Set-up: deploy roles, TLS, authentication").
# certificate_arn = "arn:aws:acm:us-east-1:<account>:certificate/<id>"
# domain_name     = "api.example.com"
# route53_zone_id = "<hosted zone id>"   # optional: Terraform creates the alias record

task_cpu    = 1024
task_memory = 2048

# At least two tasks, spread over two zones by ECS.
desired_count = 2
min_capacity  = 2
max_capacity  = 8

cpu_target_percent = 60
# Measured (README, "Performance", capture on, c=16): 5,505 and 10,081 requests/s per vCPU
# with p99 under 15 ms in the two quiet runs (V2 JSON single, the slowest single-image
# row); the slower run is the basis. 1 vCPU -> 5,500/s; aim at under half of that for
# headroom (a Fargate vCPU is not the benchmark's core, and a new task takes a minute or
# two to serve): 2,500/s. ALBRequestCountPerTarget is a one-minute Sum, so the target is
# 2,500 x 60 per task per minute.
requests_per_target = 150000

log_retention_days                = 90
health_check_grace_period_seconds = 90
capture_retention_days            = 400

alarm_5xx_threshold       = 10
alarm_latency_p95_seconds = 0.5
