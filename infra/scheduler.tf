# The poll tick: Cloud Scheduler publishes to the poll topic; the poll function, given a
# tick, publishes one {"job_id"} message per active job back to the same topic, and each
# of those invocations advances its one job (services/poll.py). Cloud Scheduler's service
# agent publishes, so no grant is needed; the poll function's own publisher grant on its
# topic is in local.access.

resource "google_cloud_scheduler_job" "poll" {
  name        = "${var.prefix}-poll"
  project     = var.project_id
  region      = var.region
  description = "Advance every active batchline job (publishes a tick to ${google_pubsub_topic.poll.name}, fanned out one message per job)."
  schedule    = var.poll_schedule.cron
  time_zone   = var.poll_schedule.time_zone
  paused      = var.poll_schedule.paused
  pubsub_target {
    topic_name = google_pubsub_topic.poll.id
    data       = base64encode(jsonencode({ tick = "poll" }))
  }
  depends_on = [google_project_service.enabled]
}
