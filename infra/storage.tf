# The three buckets. Uniform bucket-level access and public access prevention on all;
# input and output keep old versions for a while; work is scratch space with a lifecycle.

resource "google_storage_bucket" "input" {
  # checkov:skip=CKV_GCP_62:Access is audited with Cloud Audit Logs (data access logs), not the legacy usage-log export to another bucket.
  name                        = "${local.bucket_prefix}-input"
  project                     = var.project_id
  location                    = local.bucket_location
  force_destroy               = var.buckets.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  versioning {
    enabled = true
  }
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.buckets.noncurrent_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }
  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }
  dynamic "encryption" {
    for_each = var.kms_key == null ? [] : [var.kms_key]
    content {
      default_kms_key_name = encryption.value
    }
  }
  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.gcs]
}

resource "google_storage_bucket" "output" {
  # checkov:skip=CKV_GCP_62:Access is audited with Cloud Audit Logs (data access logs), not the legacy usage-log export to another bucket.
  name                        = "${local.bucket_prefix}-output"
  project                     = var.project_id
  location                    = local.bucket_location
  force_destroy               = var.buckets.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  versioning {
    enabled = true
  }
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.buckets.noncurrent_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }
  dynamic "encryption" {
    for_each = var.kms_key == null ? [] : [var.kms_key]
    content {
      default_kms_key_name = encryption.value
    }
  }
  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.gcs]
}

resource "google_storage_bucket" "work" {
  # checkov:skip=CKV_GCP_62:Access is audited with Cloud Audit Logs (data access logs), not the legacy usage-log export to another bucket.
  # checkov:skip=CKV_GCP_78:Scratch space: every object is written once under a deterministic name (create-only) and can be rebuilt from the input; old versions would only keep expired payloads alive.
  name                        = "${local.bucket_prefix}-work"
  project                     = var.project_id
  location                    = local.bucket_location
  force_destroy               = var.buckets.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  # Staged payloads, manifests, chunk results and inline API requests. The function
  # sources (sources/) are kept: each is small and named by its MD5.
  lifecycle_rule {
    condition {
      age            = var.buckets.work_retention_days
      matches_prefix = ["jobs/", "inline/"]
    }
    action {
      type = "Delete"
    }
  }
  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }
  dynamic "encryption" {
    for_each = var.kms_key == null ? [] : [var.kms_key]
    content {
      default_kms_key_name = encryption.value
    }
  }
  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.gcs]
}

# The Cloud Storage service agent encrypts with the customer-managed key.
data "google_storage_project_service_account" "gcs" {
  project    = var.project_id
  depends_on = [google_project_service.enabled]
}

resource "google_kms_crypto_key_iam_member" "gcs" {
  count         = var.kms_key == null ? 0 : 1
  crypto_key_id = var.kms_key
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}
