output "buckets" {
  description = "Bucket names: drop JSONL files into input, find results in output."
  value       = local.buckets
}

output "topics" {
  description = "Pub/Sub topic names."
  value = merge(local.topics, {
    dead_letter = google_pubsub_topic.dead_letter.name
  })
}

output "events_subscription" {
  description = "Pull subscription with the job.completed events (null when disabled)."
  value       = try(google_pubsub_subscription.events[0].name, null)
}

output "functions" {
  description = "Function names, for `gcloud functions logs read` and the console."
  value       = { for k, f in google_cloudfunctions2_function.function : k => f.name }
}

output "api_url" {
  description = "URL of the HTTP API; call it with an identity token of a principal in api_invokers."
  value       = google_cloudfunctions2_function.function["api"].service_config[0].uri
}

output "service_accounts" {
  description = "Runtime service account of each function."
  value       = { for k, sa in google_service_account.function : k => sa.email }
}

output "api_key_secrets" {
  description = "Secret Manager secret for each provider API key, by the environment variable it becomes."
  value       = { for k, s in google_secret_manager_secret.api_key : local.providers[k].api_key_env => s.secret_id }
}

output "source_object" {
  description = "The deployed source zip in the work bucket."
  value       = "gs://${google_storage_bucket.work.name}/${google_storage_bucket_object.bundle.name}"
}

output "vertex_service_agent" {
  description = "The Vertex AI service agent that runs the batch jobs (null unless vertex is enabled)."
  value       = try(google_project_service_identity.vertex[0].email, null)
}
