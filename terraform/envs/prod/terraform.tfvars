environment = "prod"

# The repository whose `prod` GitHub environment may deploy here: set yours.
github_repository = "example-org/onnx-ship"

# prod ships the image dev built and verified: its deploy role may pull from dev's repository.
promote_from_environments = ["dev"]

vpc_cidr_block         = "10.20.0.0/16"
availability_zones     = ["us-east-1a", "us-east-1b"]
one_nat_gateway_per_az = true
deletion_protection    = true
force_destroy          = false

task_cpu    = 1024
task_memory = 2048

# At least two tasks, spread over two zones by ECS.
desired_count = 2
min_capacity  = 2
max_capacity  = 8

cpu_target_percent  = 60
requests_per_target = 2000

log_retention_days                = 90
health_check_grace_period_seconds = 90

alarm_5xx_threshold       = 10
alarm_latency_p95_seconds = 0.5
