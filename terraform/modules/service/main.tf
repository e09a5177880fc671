# The running service: an ECS cluster, a Fargate service behind an Application
# Load Balancer (HTTPS with a certificate), the bearer tokens it checks, its roles,
# logs, autoscaling and the alarms that roll a bad deployment back. Terraform owns
# the task definition; each release registers a
# revision of it with its own image and model (pipeline/release.py) and points
# the service at that, so the service ignores `task_definition` (and
# `desired_count`, which autoscaling owns).

data "aws_region" "current" {}

locals {
  # The capture key layout, one value: the service writes <capture_url>/<APP_ENV>/YYYY/MM/DD/HH/<part>
  # (service/capture/records.py), so the task role may write only capture/<environment>/.
  capture_root   = "capture"
  capture_url    = "s3://${var.bucket_name}/${local.capture_root}"
  capture_prefix = "${local.capture_root}/${var.environment}/"

  # The service keeps idle connections open longer than the load balancer does, so the
  # load balancer always closes them first and never reuses one the target has just
  # closed (a 502): ELB, "Application Load Balancer idle timeout". Longer than any idle
  # timeout a load balancer takes (1 to 4,000 s: ELB API reference, LoadBalancerAttribute,
  # idle_timeout.timeout_seconds), not than this one's: a new idle timeout
  # reaches the load balancer at `terraform apply`, while the tasks keep running the
  # revision of the last release (and a rollback runs an older one), so a keep-alive
  # derived from it would fall behind until the next release.
  load_balancer_max_idle_timeout_seconds = 4000
  keep_alive_timeout_seconds             = local.load_balancer_max_idle_timeout_seconds + 5

  # One uvicorn worker per vCPU of the task (1,024 CPU units), one for a fraction of one:
  # a worker serves on one core, so a 2-vCPU task with one worker would use half its CPU,
  # and neither the CPU target nor requests_per_target (both per vCPU) would be reached.
  workers = max(1, floor(var.cpu / 1024))

  # The image owns MODEL_CACHE_DIR and TMPDIR (inside its VOLUME, mounted below).
  container_environment = merge(
    {
      APP_ENV                    = var.environment
      HOST                       = "0.0.0.0"
      PORT                       = tostring(var.container_port)
      PREDICTION_LOG_URL         = local.capture_url
      PREDICTION_LOG_SAMPLE      = tostring(var.prediction_log_sample)
      KEEP_ALIVE_TIMEOUT_SECONDS = tostring(local.keep_alive_timeout_seconds)
      STOP_TIMEOUT_SECONDS       = tostring(var.stop_timeout_seconds)
      WEB_CONCURRENCY            = tostring(local.workers)
    },
    var.container_environment,
  )
}

################################################################################
# Cluster
################################################################################

resource "aws_ecs_cluster" "this" {
  #checkov:skip=CKV_AWS_65:Container Insights is var.container_insights: on in prod; off in dev, where ECS's free service CPU and memory metrics suffice and per-task metrics would cost more than the task.
  name = var.name

  setting {
    name  = "containerInsights"
    value = var.container_insights ? "enabled" : "disabled"
  }

  tags = var.tags
}

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:CloudWatch Logs already encrypts at rest; a customer key would add a key policy to maintain and no control we use.
  #checkov:skip=CKV_AWS_338:Application logs are operational; predictions are kept in S3, so retention is a per-environment cost choice (var.log_retention_days).
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days

  tags = var.tags
}

################################################################################
# Authentication: the service's bearer tokens in Secrets Manager
################################################################################

# The value never passes through Terraform's state, a tfvars file or the image:
# Secrets Manager generates it (GetRandomPassword, an ephemeral resource, kept in
# no plan or state) and Terraform hands it on through a write-only argument
# (Terraform 1.11; the state holds only secret_string_wo_version). ECS reads it
# into the container's API_TOKENS when a task starts (ECS developer guide,
# "Pass Secrets Manager secrets through Amazon ECS environment variables").
# Raising api_token_version writes a fresh token (README.md, "Set-up: deploy roles,
# TLS, authentication", for reading and rotating it).
ephemeral "aws_secretsmanager_random_password" "api_token" {
  count = var.require_authentication ? 1 : 0

  password_length = 48
  # Letters and digits only: the secret holds tokens separated by commas or
  # whitespace, and a token travels in an HTTP header.
  exclude_punctuation = true
  include_space       = false
}

resource "aws_secretsmanager_secret" "api_tokens" {
  #checkov:skip=CKV_AWS_149:Encrypted with the AWS-managed aws/secretsmanager key: only this account's principals that IAM lets read the secret can decrypt it, and a customer key would add a key policy and kms:Decrypt grants without a control we use.
  #checkov:skip=CKV2_AWS_57:Clients hold these tokens, so a scheduled rotation Lambda would lock them out unannounced; rotation is deliberate (raise api_token_version, or put "new,old" and restart the tasks: README.md, Set-up).
  count = var.require_authentication ? 1 : 0

  name                    = "${var.name}/api-tokens"
  description             = "Bearer tokens the ${var.name} service accepts (API_TOKENS): one or more, separated by commas or whitespace; the first is the one the pipeline sends."
  recovery_window_in_days = var.secret_recovery_window_days

  tags = var.tags
}

resource "aws_secretsmanager_secret_version" "api_tokens" {
  count = var.require_authentication ? 1 : 0

  secret_id                = aws_secretsmanager_secret.api_tokens[0].id
  secret_string_wo         = ephemeral.aws_secretsmanager_random_password.api_token[0].random_password
  secret_string_wo_version = var.api_token_version
}

locals {
  api_token_secret_arn = var.require_authentication ? aws_secretsmanager_secret.api_tokens[0].arn : null

  container_secrets = var.require_authentication ? [
    { name = "API_TOKENS", valueFrom = aws_secretsmanager_secret.api_tokens[0].arn },
  ] : []
}

################################################################################
# IAM: execution role (pull the image, write logs, read the API tokens)
# Exactly the execution role's entries of pipeline/aws_calls.py.
################################################################################

# The execution role's trust: ECS's own example ("Amazon ECS task execution IAM role")
# names no condition keys for it.
data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid = "EcrLogin"
    # GetAuthorizationToken has no resource-level permissions.
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "PullServiceImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [var.repository_arn]
  }

  statement {
    sid = "WriteServiceLogs"
    actions = [
      "logs:CreateLogStream",
      "logs:PutLogEvents",
    ]
    resources = ["${aws_cloudwatch_log_group.this.arn}:*"]
  }

  # ECS reads the task definition's `secrets` with the execution role when it starts
  # a task (ECS developer guide, "Required IAM permissions for Amazon ECS secrets");
  # the AWS-managed key needs no kms:Decrypt grant.
  dynamic "statement" {
    for_each = var.require_authentication ? [1] : []

    content {
      sid       = "ReadApiTokens"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = [aws_secretsmanager_secret.api_tokens[0].arn]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json

  tags = var.tags
}

resource "aws_iam_role_policy" "execution" {
  name   = "pull-image-write-logs"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

################################################################################
# IAM: task role (read models/, write this environment's capture/)
# Exactly the task role's entries of pipeline/aws_calls.py. It lists nothing, so it
# has no s3:ListBucket: a missing model answers 403, not 404.
################################################################################

data "aws_iam_policy_document" "task" {
  statement {
    sid       = "ReadModels"
    actions   = ["s3:GetObject"]
    resources = ["${var.bucket_arn}/models/*"]
  }

  statement {
    sid       = "WriteOwnCapture"
    actions   = ["s3:PutObject"]
    resources = ["${var.bucket_arn}/${local.capture_prefix}*"]
  }
}

data "aws_caller_identity" "current" {}

# The task role's trust: ECS tasks of this account only, as ECS recommends against the
# confused deputy ("Amazon ECS task IAM role": aws:SourceAccount or aws:SourceArn; a
# cluster's ARN is not supported there); the compaction role trusts the same (the
# task_trust_policy output).
data "aws_iam_policy_document" "task_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.task_assume.json

  tags = var.tags
}

resource "aws_iam_role_policy" "task" {
  name   = "read-models-write-capture"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

################################################################################
# Task definition (every release overlays its image and model on this revision)
################################################################################

# Terraform replaces this revision whenever an argument below changes, and by default
# deregisters the one it replaces. Until the first release succeeds, the service runs
# Terraform's revision and ignores the new one (lifecycle below), and a failed first
# release returns to what the service ran; ECS refuses UpdateService to an INACTIVE
# revision (ECS API reference, DeregisterTaskDefinition). skip_destroy keeps every
# revision Terraform made ACTIVE, replaced or destroyed (provider docs,
# aws_ecs_task_definition, skip_destroy). The pipeline's revisions are never in this
# state, so nothing here deregisters them.
resource "aws_ecs_task_definition" "this" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  # The root filesystem is read-only; the model cache, the capture spool and Python's
  # temporary files go to this task-local volume. Its containerPath is the image's
  # VOLUME, so ECS copies the image's directory (owned by the service's uid) into it;
  # any other path would start owned by root (ECS developer guide, "Bind mounts").
  volume {
    name = "scratch"
  }

  container_definitions = jsonencode([
    {
      name = var.container_name
      # Until the first release: a placeholder on an image that exists (placeholder.py).
      image                  = var.placeholder_image
      command                = ["python", "-B", "-c", file("${path.module}/placeholder.py")]
      essential              = true
      readonlyRootFilesystem = true
      # SIGTERM, then SIGKILL this many seconds later; the service splits the same
      # number (STOP_TIMEOUT_SECONDS) between its drain and its capture flush.
      stopTimeout = var.stop_timeout_seconds
      # An init process as PID 1 passes SIGTERM on to the service (ECS API reference,
      # LinuxParameters, initProcessEnabled: valid on Fargate). A Python PID 1 gets no
      # signal it has no handler for (pid_namespaces(7)): the placeholder, and the
      # service until uvicorn installs its handlers, would ignore SIGTERM and run until
      # SIGKILL, stopTimeout later.
      linuxParameters = {
        initProcessEnabled = true
      }
      portMappings = [
        {
          containerPort = var.container_port
          protocol      = "tcp"
        },
      ]
      environment = [
        for key in sort(keys(local.container_environment)) : {
          name  = key
          value = local.container_environment[key]
        }
      ]
      # API_TOKENS, from Secrets Manager when the task starts (absent without authentication).
      secrets = local.container_secrets
      mountPoints = [
        {
          sourceVolume  = "scratch"
          containerPath = "/var/lib/onnx-ship"
          readOnly      = false
        },
      ]
      # Non-blocking, whatever the account's defaultLogDriverMode says: a CloudWatch Logs
      # stall then costs log lines past a 25 MB buffer, never a write to stdout that
      # blocks the event loop and every request with it (ECS API reference,
      # LogConfiguration, mode and max-buffer-size).
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.this.name
          awslogs-region        = data.aws_region.current.name
          awslogs-stream-prefix = var.container_name
          mode                  = "non-blocking"
          max-buffer-size       = "25m"
        }
      }
    },
  ])

  skip_destroy = true

  tags = var.tags
}

################################################################################
# Load balancer: HTTPS on 443 when a certificate is given (port 80 redirects
# there), plain HTTP on 80 otherwise (the endpoint_warning output says so).
################################################################################

locals {
  tls = var.certificate_arn != ""

  endpoint_host = var.domain_name != "" ? var.domain_name : aws_lb.this.dns_name
  endpoint_url  = "${local.tls ? "https" : "http"}://${local.endpoint_host}"
}

# Its description says HTTP although 443 opens with a certificate: a new description
# would replace the group under the running load balancer.
resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "Load balancer of ${var.name}: HTTP in from the allowed networks, out to the tasks only"
  vpc_id      = var.vpc_id

  tags = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  #checkov:skip=CKV_AWS_260:The load balancer is the service's public endpoint (with a certificate port 80 only redirects to 443); narrow var.ingress_cidr_blocks to restrict it.
  for_each = toset(var.ingress_cidr_blocks)

  security_group_id = aws_security_group.alb.id
  description       = "HTTP from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each = local.tls ? toset(var.ingress_cidr_blocks) : toset([])

  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "alb_to_tasks" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the container port of the tasks"
  ip_protocol                  = "tcp"
  from_port                    = var.container_port
  to_port                      = var.container_port
  referenced_security_group_id = aws_security_group.tasks.id
}

resource "aws_lb" "this" {
  #checkov:skip=CKV_AWS_91:Access logs need a separate SSE-S3 bucket; every prediction is already captured to S3 and request metrics are in CloudWatch.
  #checkov:skip=CKV2_AWS_28:No WAF: the API takes fixed-size tensors, rejects malformed bodies with 4xx, checks a bearer token and has no state to attack; add one in front when it faces untrusted traffic at scale.
  #checkov:skip=CKV_AWS_150:Deletion protection is var.deletion_protection: on in prod, off in dev so the environment can be torn down and rebuilt.
  #checkov:skip=CKV2_AWS_20:Port 80 redirects to the HTTPS listener whenever var.certificate_arn is set; without a certificate there is nothing to redirect to and the endpoint_warning output says the traffic is plain HTTP.
  name                       = var.name
  load_balancer_type         = "application"
  internal                   = false
  security_groups            = [aws_security_group.alb.id]
  subnets                    = var.public_subnet_ids
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  idle_timeout               = var.load_balancer_idle_timeout_seconds
  # Every request forwarded carries X-Forwarded-For: the service answers /metrics 404 to
  # any request with it (the listener rule's literal path match lets /%6Detrics or
  # //metrics through, which the service would route to /metrics). "remove" would drop it.
  xff_header_processing_mode = "append"

  tags = var.tags
}

resource "aws_lb_target_group" "this" {
  #checkov:skip=CKV_AWS_378:Load balancer to task traffic never leaves the VPC; TLS ends at the load balancer and the container serves plain HTTP on its port.
  name                 = var.name
  port                 = var.container_port
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    path                = var.health_check_path
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = var.tags
}

# Port 80: forwards to the tasks without a certificate, redirects (301) to 443 with one.
resource "aws_lb_listener" "http" {
  #checkov:skip=CKV_AWS_2:With var.certificate_arn this listener only redirects to the HTTPS listener; without one the endpoint is plain HTTP and the endpoint_warning output says so.
  #checkov:skip=CKV_AWS_103:Port 80 carries no TLS; the HTTPS listener sets var.ssl_policy.
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  dynamic "default_action" {
    for_each = local.tls ? [] : [1]

    content {
      type             = "forward"
      target_group_arn = aws_lb_target_group.this.arn
    }
  }

  dynamic "default_action" {
    for_each = local.tls ? [1] : []

    content {
      type = "redirect"

      redirect {
        protocol    = "HTTPS"
        port        = "443"
        status_code = "HTTP_301"
      }
    }
  }

  tags = var.tags
}

resource "aws_lb_listener" "https" {
  count = local.tls ? 1 : 0

  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.ssl_policy
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  tags = var.tags
}

# /metrics never leaves the VPC: the listener that forwards to the tasks answers it
# itself, in the service's error shape. Prometheus scrapes the tasks' own address
# from inside the VPC instead (terraform/README.md, "Metrics").
resource "aws_lb_listener_rule" "metrics_not_public" {
  listener_arn = local.tls ? aws_lb_listener.https[0].arn : aws_lb_listener.http.arn
  priority     = 1

  condition {
    path_pattern {
      values = ["/metrics", "/metrics/*"]
    }
  }

  action {
    type = "fixed-response"

    fixed_response {
      content_type = "application/json"
      status_code  = "404"
      message_body = jsonencode({ error = "no route '/metrics' through the load balancer: metrics are scraped inside the VPC; /openapi.json lists the routes" })
    }
  }

  tags = var.tags
}

resource "aws_route53_record" "endpoint" {
  count = var.route53_zone_id != "" ? 1 : 0

  zone_id = var.route53_zone_id
  name    = var.domain_name
  type    = "A"

  alias {
    name                   = aws_lb.this.dns_name
    zone_id                = aws_lb.this.zone_id
    evaluate_target_health = true
  }
}

################################################################################
# Service
################################################################################

# The only way in, whether the tasks sit in private subnets or (no NAT gateway) in
# public ones with a public IP: from the load balancer's group, plus the metrics
# scrapers' groups when given (terraform/README.md, "Metrics").
resource "aws_security_group" "tasks" {
  name        = "${var.name}-tasks"
  description = "Tasks of ${var.name}: in from the load balancer only, out over HTTPS (ECR, logs, S3)"
  vpc_id      = var.vpc_id

  tags = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "tasks_from_metrics_scrapers" {
  for_each = toset(var.metrics_scraper_security_group_ids)

  security_group_id            = aws_security_group.tasks.id
  description                  = "Prometheus scrape of /metrics from ${each.value}"
  ip_protocol                  = "tcp"
  from_port                    = var.container_port
  to_port                      = var.container_port
  referenced_security_group_id = each.value
}

resource "aws_vpc_security_group_ingress_rule" "tasks_from_alb" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "From the load balancer to the container port"
  ip_protocol                  = "tcp"
  from_port                    = var.container_port
  to_port                      = var.container_port
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_vpc_security_group_egress_rule" "tasks_https" {
  security_group_id = aws_security_group.tasks.id
  description       = "HTTPS to AWS APIs (ECR, CloudWatch Logs, Secrets Manager, S3) through NAT or the internet gateway and the S3 endpoint"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_ecs_service" "this" {
  #checkov:skip=CKV_AWS_333:A public IP only where var.assign_public_ip (nat_gateways = "none", dev): it replaces a NAT gateway for the task's outbound calls, and the task's security group admits the load balancer alone.
  name                              = var.name
  cluster                           = aws_ecs_cluster.this.id
  task_definition                   = aws_ecs_task_definition.this.arn
  desired_count                     = var.desired_count
  launch_type                       = "FARGATE"
  platform_version                  = "LATEST"
  health_check_grace_period_seconds = var.health_check_grace_period_seconds
  propagate_tags                    = "SERVICE"
  enable_ecs_managed_tags           = true
  wait_for_steady_state             = false

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  availability_zone_rebalancing      = "ENABLED"

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  dynamic "alarms" {
    for_each = var.enable_deployment_alarms ? [1] : []

    content {
      enable      = true
      rollback    = true
      alarm_names = [for alarm in aws_cloudwatch_metric_alarm.deployment : alarm.alarm_name]
    }
  }

  network_configuration {
    subnets          = var.task_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = var.assign_public_ip
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.this.arn
    container_name   = var.container_name
    container_port   = var.container_port
  }

  lifecycle {
    # The pipeline registers task definitions and autoscaling sets the count.
    ignore_changes = [task_definition, desired_count]
  }

  tags = var.tags

  # What a first task needs the moment it starts, beyond what the arguments above
  # reference: the listeners, its execution role's grants, and a value in the API
  # tokens' secret. ECS reads the secret named in `secrets` as GetSecretValue without
  # a version, that is its AWSCURRENT version (Secrets Manager API reference,
  # GetSecretValue); a secret created without one has none, and the task stops with
  # ResourceInitializationError (ECS developer guide, "Pass Secrets Manager secrets
  # through Amazon ECS environment variables"). The routes a task needs come with
  # var.task_subnet_ids (network module, outputs.tf).
  depends_on = [
    aws_lb_listener.http,
    aws_lb_listener.https,
    aws_iam_role_policy.execution,
    aws_secretsmanager_secret_version.api_tokens,
  ]
}

################################################################################
# Alarms (wired to the deployment: a firing alarm rolls the deployment back)
################################################################################

# The targets' own 5xx and latency are per target group; the 5xx the load balancer
# answers itself (502 when a task resets or closes a connection it was sent a request
# on, 503 with no healthy target, 504 on a target's timeout) never reach
# HTTPCode_Target_5XX_Count, and HTTPCode_ELB_5XX_Count has no TargetGroup dimension
# (ELB guide, "CloudWatch metrics for your Application Load Balancer").
locals {
  target_dimensions = {
    LoadBalancer = aws_lb.this.arn_suffix
    TargetGroup  = aws_lb_target_group.this.arn_suffix
  }

  alarms = {
    target-5xx = {
      description         = "Targets of ${var.name} answer 5xx"
      metric_name         = "HTTPCode_Target_5XX_Count"
      statistic           = "Sum"
      extended_statistic  = null
      threshold           = var.alarm_5xx_threshold
      evaluation_periods  = 2
      comparison_operator = "GreaterThanThreshold"
      dimensions          = local.target_dimensions
    }
    lb-5xx = {
      description         = "The load balancer of ${var.name} answers 5xx itself (502, 503, 504)"
      metric_name         = "HTTPCode_ELB_5XX_Count"
      statistic           = "Sum"
      extended_statistic  = null
      threshold           = var.alarm_5xx_threshold
      evaluation_periods  = 2
      comparison_operator = "GreaterThanThreshold"
      dimensions          = { LoadBalancer = aws_lb.this.arn_suffix }
    }
    latency-p95 = {
      description         = "p95 response time of ${var.name} targets above ${var.alarm_latency_p95_seconds}s"
      metric_name         = "TargetResponseTime"
      statistic           = null
      extended_statistic  = "p95"
      threshold           = var.alarm_latency_p95_seconds
      evaluation_periods  = 3
      comparison_operator = "GreaterThanThreshold"
      dimensions          = local.target_dimensions
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "deployment" {
  for_each = local.alarms

  alarm_name         = "${var.name}-${each.key}"
  alarm_description  = each.value.description
  namespace          = "AWS/ApplicationELB"
  metric_name        = each.value.metric_name
  statistic          = each.value.statistic
  extended_statistic = each.value.extended_statistic
  # A percentile of fewer than 10/(1 - p) requests a period (200 for p95) is the slowest
  # request or two: "ignore" keeps the alarm's state then, so a few slow requests at low
  # traffic cannot roll a good release back (CloudWatch guide, "Percentile-based alarms
  # and low data samples"). Percentile alarms only.
  evaluate_low_sample_count_percentiles = each.value.extended_statistic == null ? null : "ignore"
  period                                = 60
  evaluation_periods                    = each.value.evaluation_periods
  threshold                             = each.value.threshold
  comparison_operator                   = each.value.comparison_operator
  treat_missing_data                    = "notBreaching"
  alarm_actions                         = var.alarm_actions
  ok_actions                            = var.alarm_actions

  dimensions = each.value.dimensions

  tags = var.tags
}

################################################################################
# Autoscaling (target tracking on CPU and requests per target)
################################################################################

resource "aws_appautoscaling_target" "this" {
  count = var.enable_autoscaling ? 1 : 0

  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.this.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_capacity
  max_capacity       = var.max_capacity

  tags = var.tags
}

resource "aws_appautoscaling_policy" "cpu" {
  count = var.enable_autoscaling ? 1 : 0

  name               = "${var.name}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this[0].service_namespace
  resource_id        = aws_appautoscaling_target.this[0].resource_id
  scalable_dimension = aws_appautoscaling_target.this[0].scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.cpu_target_percent
    scale_in_cooldown  = 300
    scale_out_cooldown = 60

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_policy" "requests" {
  count = var.enable_autoscaling ? 1 : 0

  # Application Auto Scaling refuses a change to a scalable target that has one pending
  # (ConcurrentUpdateException, PutScalingPolicy), and the provider does not retry it:
  # the two policies of the service's target are put one after the other.
  depends_on = [aws_appautoscaling_policy.cpu]

  name               = "${var.name}-requests"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this[0].service_namespace
  resource_id        = aws_appautoscaling_target.this[0].resource_id
  scalable_dimension = aws_appautoscaling_target.this[0].scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.requests_per_target
    scale_in_cooldown  = 300
    scale_out_cooldown = 60

    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.this.arn_suffix}/${aws_lb_target_group.this.arn_suffix}"
    }
  }
}
