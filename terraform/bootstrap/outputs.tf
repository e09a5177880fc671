output "state_bucket_name" {
  description = "Bucket for the environments' state: export TF_STATE_BUCKET=<this> before `nox -s plan -- <env>`."
  value       = aws_s3_bucket.state.id
}

output "aws_region" {
  description = "Region of the state bucket."
  value       = var.aws_region
}

output "github_oidc_provider_arn" {
  description = "The account's GitHub OIDC provider, trusted by every environment's deploy role."
  value       = local.github_oidc_provider_arn
}
