terraform {
  required_version = ">= 1.11"

  # Partial configuration: bucket, key and region come from backend.hcl and
  # TF_STATE_BUCKET at `terraform init` (see terraform/README.md), so nothing
  # account-specific is committed and this file is the same in every environment.
  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.100, < 6.0"
    }
  }
}
