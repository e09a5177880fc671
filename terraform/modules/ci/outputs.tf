################################################################################
# Deploy role
################################################################################

output "deploy_role_arn" {
  description = "Role the environment's GitHub Actions jobs assume (aws-actions/configure-aws-credentials role-to-assume)."
  value       = aws_iam_role.deploy.arn
}

output "deploy_role_name" {
  description = "Name of the deploy role."
  value       = aws_iam_role.deploy.name
}

output "github_subject" {
  description = "The only OIDC subject the role trusts (the repository's customised subject: repo, environment and job_workflow_ref)."
  value       = local.github_subject
}
