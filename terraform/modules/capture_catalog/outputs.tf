################################################################################
# Catalog
################################################################################

output "glue_database" {
  description = "Glue database of the capture table."
  value       = aws_glue_catalog_database.this.name
}

output "glue_table" {
  description = "Glue table over capture/<environment>/, partitioned by hour through projection."
  value       = aws_glue_catalog_table.predictions.name
}

output "athena_workgroup" {
  description = "Athena workgroup with the result location and the byte-scanned limit."
  value       = aws_athena_workgroup.this.name
}

output "named_query_ids" {
  description = "Saved queries of the report's figures, by name."
  value       = { for key, query in aws_athena_named_query.this : key => query.id }
}

################################################################################
# Compaction
################################################################################

output "compaction_role_arn" {
  description = "Task role of the compaction task (read, write and delete under capture/<environment>/)."
  value       = aws_iam_role.compaction.arn
}

output "compaction_task_family" {
  description = "Task family the schedule runs (its latest ACTIVE revision); a successful release registers its image there."
  value       = local.compaction_family
}

output "scheduler_role_arn" {
  description = "Role EventBridge Scheduler assumes to start the compaction task."
  value       = aws_iam_role.scheduler.arn
}

output "compaction_schedule_name" {
  description = "The EventBridge Scheduler schedule starting the compaction task."
  value       = aws_scheduler_schedule.compaction.name
}
