environment = "dev"

# The repository whose `dev` GitHub environment may deploy here: set yours.
github_repository = "example-org/onnx-ship"

vpc_cidr_block         = "10.10.0.0/16"
availability_zones     = ["us-east-1a", "us-east-1b"]
one_nat_gateway_per_az = false
deletion_protection    = false
force_destroy          = true

task_cpu    = 512
task_memory = 1024

desired_count = 1
min_capacity  = 1
max_capacity  = 2

cpu_target_percent  = 70
requests_per_target = 1000

log_retention_days                = 14
health_check_grace_period_seconds = 60

alarm_5xx_threshold       = 5
alarm_latency_p95_seconds = 1
