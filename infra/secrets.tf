# One secret per provider API key. Terraform creates the secret, never a version: the
# value is added with `gcloud secrets versions add` (make deploy does it from the
# environment), so it is in neither Terraform's variables nor its state.

resource "google_secret_manager_secret" "api_key" {
  for_each  = local.api_key_secrets
  project   = var.project_id
  secret_id = "${var.prefix}-${each.key}-api-key"
  labels = {
    batchline-env = lower(each.value.env)
  }
  replication {
    user_managed {
      replicas {
        location = var.region
        dynamic "customer_managed_encryption" {
          for_each = var.kms_key == null ? [] : [var.kms_key]
          content {
            kms_key_name = customer_managed_encryption.value
          }
        }
      }
    }
  }
  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.secretmanager]
}

# Each function reads only the keys it is given, through its own service account.
resource "google_secret_manager_secret_iam_member" "api_key_accessor" {
  for_each = {
    for pair in setproduct([for f, a in local.access : f if a.provider_keys], keys(local.api_key_secrets)) :
    "${pair[0]}/${pair[1]}" => { function = pair[0], secret = pair[1] }
  }
  project   = var.project_id
  secret_id = google_secret_manager_secret.api_key[each.value.secret].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function[each.value.function].member
}

# The webhook secrets (local.webhook_secrets): the same rules, one accessor per function
# that mounts it, nothing else.
resource "google_secret_manager_secret" "webhook" {
  for_each  = local.webhook_secrets
  project   = var.project_id
  secret_id = "${var.prefix}-${each.key}-webhook-secret"
  labels = {
    batchline-env = lower(each.value.env)
  }
  replication {
    user_managed {
      replicas {
        location = var.region
        dynamic "customer_managed_encryption" {
          for_each = var.kms_key == null ? [] : [var.kms_key]
          content {
            kms_key_name = customer_managed_encryption.value
          }
        }
      }
    }
  }
  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.secretmanager]
}

resource "google_secret_manager_secret_iam_member" "webhook_accessor" {
  for_each = merge([
    for k, v in local.webhook_secrets : { for f in v.functions : "${f}/${k}" => { function = f, secret = k } }
  ]...)
  project   = var.project_id
  secret_id = google_secret_manager_secret.webhook[each.value.secret].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function[each.value.function].member
}

resource "google_project_service_identity" "secretmanager" {
  count      = var.kms_key == null ? 0 : 1
  provider   = google-beta
  project    = var.project_id
  service    = "secretmanager.googleapis.com"
  depends_on = [google_project_service.enabled]
}

resource "google_kms_crypto_key_iam_member" "secretmanager" {
  count         = var.kms_key == null ? 0 : 1
  crypto_key_id = var.kms_key
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${google_project_service_identity.secretmanager[0].email}"
}
