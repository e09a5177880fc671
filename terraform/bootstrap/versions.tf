terraform {
  required_version = ">= 1.11"

  # Local state on purpose: this root creates the bucket every other state
  # lives in. Keep terraform.tfstate of this root somewhere safe (or import the
  # two resources again: they are all it holds).

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.100, < 6.0"
    }
  }
}
