# Who may invoke what. Each event function has its own trigger account that Eventarc uses
# to call it; invoker is granted on that one service. The api function is invoked only by
# the principals in var.api_invokers, never allUsers.

locals {
  event_functions = { for k, v in local.functions : k => v if v.trigger != "http" }
}

resource "google_service_account" "trigger" {
  for_each     = local.event_functions
  project      = var.project_id
  account_id   = "${var.prefix}-${each.key}-trigger"
  display_name = "batchline ${each.key} trigger"
  description  = "Eventarc identity that delivers events to the ${each.key} function."
  depends_on   = [google_project_service.enabled]
}

resource "google_cloud_run_v2_service_iam_member" "trigger_invoker" {
  for_each = local.event_functions
  project  = var.project_id
  location = google_cloudfunctions2_function.function[each.key].location
  name     = google_cloudfunctions2_function.function[each.key].name
  role     = "roles/run.invoker"
  member   = google_service_account.trigger[each.key].member
}

# Eventarc requires its trigger accounts to hold the event receiver role on the project
# (it grants nothing beyond receiving events).
resource "google_project_iam_member" "trigger_receiver" {
  for_each = local.event_functions
  project  = var.project_id
  role     = "roles/eventarc.eventReceiver"
  member   = google_service_account.trigger[each.key].member
}

# Pub/Sub's service agent signs the push requests as each trigger account.
resource "google_service_account_iam_member" "trigger_token_creator" {
  for_each           = local.event_functions
  service_account_id = google_service_account.trigger[each.key].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${google_project_service_identity.pubsub.email}"
}

# Cloud Storage's service agent publishes the bucket's object events to Eventarc's topic.
resource "google_project_iam_member" "gcs_publisher" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_cloud_run_v2_service_iam_member" "api_invoker" {
  for_each = toset(var.api_invokers)
  project  = var.project_id
  location = google_cloudfunctions2_function.function["api"].location
  name     = google_cloudfunctions2_function.function["api"].name
  role     = "roles/run.invoker"
  member   = each.value
}
