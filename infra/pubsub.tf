# Topics: poll (scheduler ticks, and one message per job: a tick's fan-out, the api's and
# OpenAI webhooks' asks), collect (a job whose batches all ended), events
# (job.completed for other services), notify (jobs' webhooks) and dead-letter. Eventarc owns the subscriptions that
# deliver poll, collect and notify to their functions (their retry policy is set on the function);
# the subscriptions below are the ones batchline owns.

resource "google_pubsub_topic" "poll" {
  name         = "${var.prefix}-poll"
  project      = var.project_id
  kms_key_name = var.kms_key
  depends_on   = [google_project_service.enabled, google_kms_crypto_key_iam_member.pubsub]
}

resource "google_pubsub_topic" "collect" {
  name                       = "${var.prefix}-collect"
  project                    = var.project_id
  kms_key_name               = var.kms_key
  message_retention_duration = var.pubsub.message_retention
  depends_on                 = [google_project_service.enabled, google_kms_crypto_key_iam_member.pubsub]
}

resource "google_pubsub_topic" "events" {
  name                       = "${var.prefix}-events"
  project                    = var.project_id
  kms_key_name               = var.kms_key
  message_retention_duration = var.pubsub.message_retention
  depends_on                 = [google_project_service.enabled, google_kms_crypto_key_iam_member.pubsub]
}

# A job's job.completed webhook, for the notify function to POST (retried by its
# trigger until the receiver answers 2xx, within the topic's retention).
resource "google_pubsub_topic" "notify" {
  name                       = "${var.prefix}-notify"
  project                    = var.project_id
  kms_key_name               = var.kms_key
  message_retention_duration = var.pubsub.message_retention
  depends_on                 = [google_project_service.enabled, google_kms_crypto_key_iam_member.pubsub]
}

resource "google_pubsub_topic" "dead_letter" {
  name                       = "${var.prefix}-dead-letter"
  project                    = var.project_id
  kms_key_name               = var.kms_key
  message_retention_duration = var.pubsub.message_retention
  depends_on                 = [google_project_service.enabled, google_kms_crypto_key_iam_member.pubsub]
}

# job.completed events, for `gcloud pubsub subscriptions pull` or a consumer that pulls.
# After dead_letter_attempts failed deliveries a message moves to the dead-letter topic.
resource "google_pubsub_subscription" "events" {
  count                      = var.pubsub.events_subscription ? 1 : 0
  name                       = "${var.prefix}-events"
  project                    = var.project_id
  topic                      = google_pubsub_topic.events.id
  ack_deadline_seconds       = 60
  message_retention_duration = var.pubsub.message_retention
  expiration_policy {
    ttl = ""
  }
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.pubsub.dead_letter_attempts
  }
}

# Keeps dead letters for inspection (`gcloud pubsub subscriptions pull <prefix>-dead-letter`).
resource "google_pubsub_subscription" "dead_letter" {
  name                       = "${var.prefix}-dead-letter"
  project                    = var.project_id
  topic                      = google_pubsub_topic.dead_letter.id
  ack_deadline_seconds       = 60
  message_retention_duration = var.pubsub.message_retention
  expiration_policy {
    ttl = ""
  }
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
}

# Pub/Sub's service agent moves dead letters: it publishes to the dead-letter topic and
# acknowledges on the source subscription. It also mints the tokens Eventarc's push
# subscriptions send to the functions (needed in projects made before April 2021).
resource "google_project_service_identity" "pubsub" {
  provider   = google-beta
  project    = var.project_id
  service    = "pubsub.googleapis.com"
  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_project_service_identity.pubsub.email}"
}

resource "google_pubsub_subscription_iam_member" "events_dead_letter_subscriber" {
  count        = var.pubsub.events_subscription ? 1 : 0
  project      = var.project_id
  subscription = google_pubsub_subscription.events[0].name
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_project_service_identity.pubsub.email}"
}

resource "google_kms_crypto_key_iam_member" "pubsub" {
  count         = var.kms_key == null ? 0 : 1
  crypto_key_id = var.kms_key
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${google_project_service_identity.pubsub.email}"
}
