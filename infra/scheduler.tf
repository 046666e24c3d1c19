# The poll tick: Cloud Scheduler publishes to the poll topic; the poll function advances
# every active job. Cloud Scheduler's service agent publishes, so no grant is needed.

resource "google_cloud_scheduler_job" "poll" {
  name        = "${var.prefix}-poll"
  project     = var.project_id
  region      = var.region
  description = "Advance every active batchline job (publishes a tick to ${google_pubsub_topic.poll.name})."
  schedule    = var.poll_schedule.cron
  time_zone   = var.poll_schedule.time_zone
  paused      = var.poll_schedule.paused
  pubsub_target {
    topic_name = google_pubsub_topic.poll.id
    data       = base64encode(jsonencode({ tick = "poll" }))
  }
  depends_on = [google_project_service.enabled]
}
