# The functions (Cloud Run functions, 2nd gen), built by Cloud Build with a dedicated
# build account into a repository of our own, each running as its own service account.

resource "google_cloudfunctions2_function" "function" {
  for_each    = local.functions
  name        = "${var.prefix}-${each.key}"
  project     = var.project_id
  location    = var.region
  description = "batchline ${each.key} (entry point ${each.value.entry_point})"

  build_config {
    runtime           = var.functions.runtime
    entry_point       = each.value.entry_point
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id
    source {
      storage_source {
        bucket = google_storage_bucket.work.name
        object = google_storage_bucket_object.bundle.name
      }
    }
  }

  service_config {
    available_memory                 = local.function_config[each.key].memory
    available_cpu                    = local.function_config[each.key].cpu
    timeout_seconds                  = local.function_config[each.key].timeout
    max_instance_count               = local.function_config[each.key].max_instances
    min_instance_count               = local.function_config[each.key].min_instances
    max_instance_request_concurrency = local.function_config[each.key].concurrency
    service_account_email            = google_service_account.function[each.key].email
    all_traffic_on_latest_revision   = true
    # Event functions are reached only through Eventarc; api through its URL, with IAM.
    ingress_settings      = each.value.trigger == "http" ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"
    environment_variables = local.function_environment
    # The provider API keys where the code calls a provider, and each webhook secret
    # where local.webhook_secrets says.
    dynamic "secret_environment_variables" {
      for_each = merge(
        {
          for k, v in local.api_key_secrets : "api-key/${k}" => {
            env = v.env, secret = google_secret_manager_secret.api_key[k].secret_id
          } if local.access[each.key].provider_keys
        },
        {
          for k, v in local.webhook_secrets : "webhook/${k}" => {
            env = v.env, secret = google_secret_manager_secret.webhook[k].secret_id
          } if contains(v.functions, each.key)
        },
      )
      content {
        key        = secret_environment_variables.value.env
        project_id = var.project_id
        secret     = secret_environment_variables.value.secret
        version    = "latest"
      }
    }
  }

  dynamic "event_trigger" {
    for_each = each.value.trigger == "http" ? [] : [each.value]
    content {
      event_type = (
        event_trigger.value.trigger == "storage"
        ? "google.cloud.storage.object.v1.finalized"
        : "google.cloud.pubsub.topic.v1.messagePublished"
      )
      # A bucket's events come from the bucket's location; Pub/Sub topics are global.
      trigger_region        = event_trigger.value.trigger == "storage" ? lower(local.bucket_location) : var.region
      pubsub_topic          = event_trigger.value.trigger == "pubsub" ? local.topic_ids[event_trigger.value.topic] : null
      service_account_email = google_service_account.trigger[each.key].email
      retry_policy          = local.function_config[each.key].retry ? "RETRY_POLICY_RETRY" : "RETRY_POLICY_DO_NOT_RETRY"
      dynamic "event_filters" {
        for_each = event_trigger.value.trigger == "storage" ? [google_storage_bucket.input.name] : []
        content {
          attribute = "bucket"
          value     = event_filters.value
        }
      }
    }
  }

  depends_on = [
    google_project_service.enabled,
    google_firestore_database.default,
    google_secret_manager_secret_iam_member.api_key_accessor,
    google_secret_manager_secret_iam_member.webhook_accessor,
    google_storage_bucket_iam_member.reader,
    google_storage_bucket_iam_member.creator,
    google_pubsub_topic_iam_member.publisher,
    google_project_iam_member.build,
    google_project_iam_member.build_staged_sources,
    google_project_iam_member.firestore_user,
    google_artifact_registry_repository_iam_member.build,
    google_storage_bucket_iam_member.build_sources,
    google_project_iam_member.gcs_publisher,
    google_project_iam_member.trigger_receiver,
    google_project_iam_member.vertex_user,
    google_project_iam_member.vertex_viewer,
    google_storage_bucket_iam_member.vertex_agent_reader,
    google_storage_bucket_iam_member.vertex_agent_creator,
    google_kms_crypto_key_iam_member.vertex,
  ]
}

locals {
  topic_ids = {
    poll    = google_pubsub_topic.poll.id
    collect = google_pubsub_topic.collect.id
    notify  = google_pubsub_topic.notify.id
  }
}

# Function images. Only the newest few are needed (a rollback redeploys from source).
resource "google_artifact_registry_repository" "functions" {
  project                = var.project_id
  location               = var.region
  repository_id          = "${var.prefix}-functions"
  description            = "batchline function images (built by Cloud Build)"
  format                 = "DOCKER"
  kms_key_name           = var.kms_key
  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 5
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "2592000s"
    }
  }
  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.artifactregistry]
}

resource "google_project_service_identity" "artifactregistry" {
  count      = var.kms_key == null ? 0 : 1
  provider   = google-beta
  project    = var.project_id
  service    = "artifactregistry.googleapis.com"
  depends_on = [google_project_service.enabled]
}

resource "google_kms_crypto_key_iam_member" "artifactregistry" {
  count         = var.kms_key == null ? 0 : 1
  crypto_key_id = var.kms_key
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${google_project_service_identity.artifactregistry[0].email}"
}
