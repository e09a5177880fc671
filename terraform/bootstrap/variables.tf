variable "aws_region" {
  description = "Region of the state bucket (the environments' backend.hcl use the same)."
  type        = string
  default     = "us-east-1"
}

variable "project" {
  description = "Project name, the prefix of every name."
  type        = string
  default     = "onnx-ship"
}

variable "state_bucket_name" {
  description = "Name of the state bucket; null for <project>-tfstate-<account id>-<region>."
  type        = string
  default     = null
}

variable "state_version_retention_days" {
  description = "Days an overwritten state version is kept (how far back a state can be restored)."
  type        = number
  default     = 365
}

variable "github_oidc_thumbprints" {
  description = "Certificate thumbprints of token.actions.githubusercontent.com (AWS no longer checks them for GitHub, the API still takes them)."
  type        = list(string)
  default = [
    "6938fd4d98bab03faadb97b34396831e3780aea1",
    "1c58a3a8518e8759bf075b76b750d4f2df264fcd",
  ]
}

variable "create_github_oidc_provider" {
  description = "Create the account's GitHub OIDC provider (token.actions.githubusercontent.com); false where the account already has one, which is then looked up and must admit the audience sts.amazonaws.com (an account holds one provider per URL)."
  type        = bool
  default     = true
}
