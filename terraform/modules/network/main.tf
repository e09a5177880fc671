# A small VPC of its own per environment. With NAT gateways (nat_gateways =
# "shared" or "per_az") public subnets hold only the load balancer and the NAT
# gateway(s), and tasks run in private subnets without public IPs, reaching ECR
# and CloudWatch Logs through NAT. Without (nat_gateways = "none") tasks run in
# the public subnets with a public IP each and reach those APIs through the
# internet gateway; their security group (service module) admits only the load
# balancer. S3 goes through a free gateway endpoint either way, which keeps model
# downloads and capture off the NAT bill.

data "aws_region" "current" {}

locals {
  azs      = var.availability_zones
  az_count = length(var.availability_zones)

  nat_gateway_count = {
    none   = 0
    shared = 1
    per_az = local.az_count
  }[var.nat_gateways]
  tasks_in_public_subnets = var.nat_gateways == "none"

  # A zone's subnets take their ranges from the zone's letter (a: public .0/24 and
  # private .100/24, b: .1 and .101, ...), not from its place in the list: a zone
  # replaced in its place gets ranges no live subnet holds, so its new subnets can be
  # made before the old ones go (create_before_destroy below).
  zone_letters = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t", "u", "v", "w", "x", "y", "z"]
  zone_netnums = [for az in local.azs : index(local.zone_letters, substr(az, -1, 1))]
}

################################################################################
# VPC
################################################################################

resource "aws_vpc" "this" {
  cidr_block           = var.cidr_block
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = merge(var.tags, { Name = var.name })
}

# Take over the default security group and leave it without rules, so nothing
# lands in an open group by accident.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id

  tags = merge(var.tags, { Name = "${var.name}-default-closed" })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id

  tags = merge(var.tags, { Name = var.name })
}

################################################################################
# Subnets
################################################################################

resource "aws_subnet" "public" {
  count = local.az_count

  vpc_id                  = aws_vpc.this.id
  availability_zone       = local.azs[count.index]
  cidr_block              = cidrsubnet(var.cidr_block, 8, local.zone_netnums[count.index])
  map_public_ip_on_launch = false

  tags = merge(var.tags, { Name = "${var.name}-public-${local.azs[count.index]}", Tier = "public" })

  # A subnet in a new zone exists before the one it replaces is deleted, so the load
  # balancer, the service and the NAT gateway move to it first. Deleted first, the old
  # subnet would still hold their network interfaces: EC2 refuses with
  # DependencyViolation, and the provider retries for its 20 minute delete timeout
  # (aws_subnet, Timeouts) while nothing moves them.
  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_subnet" "private" {
  count = local.az_count

  vpc_id            = aws_vpc.this.id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.cidr_block, 8, 100 + local.zone_netnums[count.index])

  tags = merge(var.tags, { Name = "${var.name}-private-${local.azs[count.index]}", Tier = "private" })

  # As the public subnets: the tasks' interfaces move out before the old one is deleted.
  lifecycle {
    create_before_destroy = true
  }
}

################################################################################
# Routing
################################################################################

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id

  tags = merge(var.tags, { Name = "${var.name}-public" })
}

resource "aws_route" "public_internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this.id
}

resource "aws_route_table_association" "public" {
  count = local.az_count

  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

resource "aws_eip" "nat" {
  count = local.nat_gateway_count

  domain = "vpc"

  tags = merge(var.tags, { Name = "${var.name}-nat-${local.azs[count.index]}" })

  depends_on = [aws_internet_gateway.this]
}

resource "aws_nat_gateway" "this" {
  count = local.nat_gateway_count

  allocation_id = aws_eip.nat[count.index].id
  subnet_id     = aws_subnet.public[count.index].id

  tags = merge(var.tags, { Name = "${var.name}-${local.azs[count.index]}" })
}

resource "aws_route_table" "private" {
  count = local.az_count

  vpc_id = aws_vpc.this.id

  tags = merge(var.tags, { Name = "${var.name}-private-${local.azs[count.index]}" })
}

resource "aws_route" "private_nat" {
  count = local.nat_gateway_count > 0 ? local.az_count : 0

  route_table_id         = aws_route_table.private[count.index].id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this[count.index % local.nat_gateway_count].id
}

resource "aws_route_table_association" "private" {
  count = local.az_count

  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private[count.index].id
}

resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${data.aws_region.current.name}.s3"
  vpc_endpoint_type = "Gateway"
  # Both tiers: tasks run in the public subnets when there is no NAT gateway.
  route_table_ids = concat([aws_route_table.public.id], aws_route_table.private[*].id)

  tags = merge(var.tags, { Name = "${var.name}-s3" })
}

################################################################################
# Flow logs
################################################################################

# Rejected traffic only by default (flow_log_traffic_type): the record of what the
# security groups turned away, at a fraction of ALL's ingestion bill, since every
# accepted request already shows in the load balancer's metrics.
resource "aws_cloudwatch_log_group" "flow_logs" {
  #checkov:skip=CKV_AWS_158:CloudWatch Logs already encrypts at rest; a customer key would add a key policy to maintain and no control we use.
  #checkov:skip=CKV_AWS_338:Flow logs are for debugging connectivity; retention is a per-environment cost choice (var.flow_log_retention_days).
  name              = "/vpc/${var.name}/flow-logs"
  retention_in_days = var.flow_log_retention_days

  tags = var.tags
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

# Only VPC Flow Logs acting for a flow log of this account may assume the role
# (the confused deputy): VPC user guide, "IAM role for publishing flow logs to
# CloudWatch Logs". The flow log's own id is unknown until it exists and the flow
# log needs the role first, so the ARN's id part is a wildcard, as that page allows.
data "aws_iam_policy_document" "flow_logs_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values = [
        "arn:${data.aws_partition.current.partition}:ec2:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:vpc-flow-log/*",
      ]
    }
  }
}

# The VPC user guide's "IAM role for publishing flow logs to CloudWatch Logs": the role's
# policy "must include at least" CreateLogGroup, CreateLogStream, PutLogEvents,
# DescribeLogGroups and DescribeLogStreams. Each is granted on this group only (its streams
# as `<arn>:*`); DescribeLogGroups lists, so it names the account's groups.
data "aws_iam_policy_document" "flow_logs" {
  statement {
    actions = [
      "logs:CreateLogGroup",
      "logs:CreateLogStream",
      "logs:DescribeLogStreams",
      "logs:PutLogEvents",
    ]
    resources = [
      aws_cloudwatch_log_group.flow_logs.arn,
      "${aws_cloudwatch_log_group.flow_logs.arn}:*",
    ]
  }

  statement {
    actions   = ["logs:DescribeLogGroups"]
    resources = ["arn:${data.aws_partition.current.partition}:logs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:log-group:*"]
  }
}

resource "aws_iam_role" "flow_logs" {
  name               = "${var.name}-flow-logs"
  assume_role_policy = data.aws_iam_policy_document.flow_logs_assume.json

  tags = var.tags
}

resource "aws_iam_role_policy" "flow_logs" {
  name   = "write-flow-logs"
  role   = aws_iam_role.flow_logs.id
  policy = data.aws_iam_policy_document.flow_logs.json
}

resource "aws_flow_log" "this" {
  vpc_id          = aws_vpc.this.id
  traffic_type    = var.flow_log_traffic_type
  log_destination = aws_cloudwatch_log_group.flow_logs.arn
  iam_role_arn    = aws_iam_role.flow_logs.arn

  tags = var.tags
}
