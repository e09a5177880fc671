################################################################################
# Trust
################################################################################

variable "name" {
  description = "Name prefix of the deploy role (the role is <name>-deploy): the environment's name, which the service module gives its ECS service and deployment alarms (<name>-*) too."
  type        = string
}

variable "environment" {
  description = "Environment the role deploys; also the GitHub environment name the role trusts."
  type        = string
}

variable "github_repository" {
  description = "GitHub repository allowed to assume the role, as the repo part of its OIDC subject: <owner>/<name>, or <owner>@<owner id>/<name>@<repository id> for a repository with immutable subject claims (created, renamed or transferred since 2026-07-15)."
  type        = string

  validation {
    condition     = can(regex("^([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+|[A-Za-z0-9_.-]+@[0-9]+/[A-Za-z0-9_.-]+@[0-9]+)$", var.github_repository))
    error_message = "github_repository must be <owner>/<name> (e.g. my-org/onnx-ship) or, for a repository with immutable subject claims, <owner>@<owner id>/<name>@<repository id> (e.g. my-org@123456/onnx-ship@456789; gh api repos/<owner>/<name> --jq '\"\\(.owner.login)@\\(.owner.id)/\\(.name)@\\(.id)\"' prints it). No wildcards."
  }
}

variable "github_branch" {
  description = "Branch whose pushes deploy this environment (the workflow deploys <env> from the branch <env>)."
  type        = string
}

variable "github_workflow_path" {
  description = "Workflow file that deploys, as GitHub's job_workflow_ref names it."
  type        = string
  default     = ".github/workflows/pipeline.yml"
}

variable "oidc_provider_arn" {
  description = "ARN of the account's GitHub OIDC provider (token.actions.githubusercontent.com), created by terraform/bootstrap."
  type        = string
}

################################################################################
# Resources the deploy may touch
################################################################################

variable "repository_arn" {
  description = "ECR repository the role pushes to."
  type        = string
}

variable "pull_repository_arns" {
  description = "Other ECR repositories the role may only pull from (prod: dev's, to promote the image dev verified)."
  type        = list(string)
  default     = []
}

variable "task_families" {
  description = "Task definition families the role registers revisions into (the service's and the compaction's): it may tag those revisions as it registers them."
  type        = list(string)
}

variable "service_arn" {
  description = "ECS service the role updates."
  type        = string
}

variable "task_role_arn" {
  description = "Task role the role may pass to new task definitions."
  type        = string
}

variable "execution_role_arn" {
  description = "Execution role the role may pass to new task definitions."
  type        = string
}

variable "compaction_role_arn" {
  description = "Task role of the compaction family's revisions, which a successful release registers."
  type        = string
}

variable "bucket_arn" {
  description = "Environment bucket: the role reads models/ and reads and writes deployments/<environment>/."
  type        = string
}

variable "api_token_secret_arn" {
  description = "Secret holding the service's bearer tokens, which the deploy reads to call the service; empty without authentication."
  type        = string
  default     = ""
  nullable    = false
}

variable "state_bucket_name" {
  description = "Terraform state bucket (terraform/bootstrap's state_bucket_name output): the deploy reads this environment's outputs from it."
  type        = string
}

variable "state_key" {
  description = "Key of this environment's state object in state_bucket_name (its backend.hcl key)."
  type        = string
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}
