################################################################################
# Repository
################################################################################

resource "aws_ecr_repository" "this" {
  name                 = var.name
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.force_delete

  image_scanning_configuration {
    scan_on_push = true
  }

  # AWS-managed `aws/ecr` KMS key: encrypted with KMS without a key policy to run.
  encryption_configuration {
    encryption_type = "KMS"
  }

  tags = var.tags
}

################################################################################
# Lifecycle
################################################################################

# ECR applies the rules in rulePriority order; an image that matches the tags of a
# rule is never expired by a rule of lower priority, and imageCountMoreThan keeps the
# most recently pushed images of those a rule selects (ECR user guide, "Lifecycle
# policy properties" and "How lifecycle policies work", evaluation rules). A count of
# every push alone would expire old images that still matter: the image a promoting
# environment ships is the one that first took `verified-<tree>-<model>` (when the same
# tree and model come back, the tag stays on the older image), and the images a failed
# release or a rollback returns to are earlier successful releases', each tagged so
# (pipeline/deploy.py, mark_verified; a release of a tree and model released before
# ships that image again, build_and_push). So released images are counted apart, by a
# rule before the one that counts every push.
locals {
  # The tag a successful release gives its image: pipeline/promotion.py, VERIFIED_PREFIX
  # (a test keeps the two equal).
  verified_tag_prefix = "verified-"

  lifecycle_policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Expire untagged images (failed or superseded pushes)"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = var.untagged_image_retention_days
        }
        action = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the most recent released images: what promotion ships and a rollback returns to"
        selection = {
          tagStatus     = "tagged"
          tagPrefixList = [local.verified_tag_prefix]
          countType     = "imageCountMoreThan"
          countNumber   = var.max_verified_image_count
        }
        action = { type = "expire" }
      },
      {
        # A rule with tagStatus "any" must come last (highest rulePriority).
        rulePriority = 3
        description  = "Keep the most recent pushes, released or not"
        selection = {
          tagStatus   = "any"
          countType   = "imageCountMoreThan"
          countNumber = var.max_image_count
        }
        action = { type = "expire" }
      },
    ]
  })
}

resource "aws_ecr_lifecycle_policy" "this" {
  repository = aws_ecr_repository.this.name
  policy     = local.lifecycle_policy
}
