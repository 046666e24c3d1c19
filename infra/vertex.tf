# Vertex AI (Gemini batch prediction), only when "vertex" is in var.enabled_providers. It
# has no API key: the functions call it as their own service accounts, and the batch job
# then runs as the project's Vertex AI service agent, which reads the chunk's staged
# payload (jobs/<job>/chunks/<n>/input.jsonl) from the work bucket and writes its
# predictions beside it (jobs/<job>/chunks/<n>/prediction-model-<time>/). Nothing else.

locals {
  vertex_enabled = contains(var.enabled_providers, "vertex")
  # Where the jobs run, and whose service agent runs them (BATCHLINE_VERTEX_PROJECT).
  vertex_project = coalesce(var.settings.vertex_project, var.project_id)
  # The functions given each Vertex AI role (local.access[*].vertex).
  vertex_users   = local.vertex_enabled ? toset([for f, a in local.access : f if a.vertex == "user"]) : toset([])
  vertex_viewers = local.vertex_enabled ? toset([for f, a in local.access : f if a.vertex == "viewer"]) : toset([])
  # The only objects the service agent may touch: the jobs' data (not the function
  # sources or the inline API requests).
  vertex_agent_objects = "projects/_/buckets/${google_storage_bucket.work.name}/objects/jobs/"
}

resource "google_project_service" "vertex" {
  count              = local.vertex_enabled && var.enable_apis ? 1 : 0
  project            = local.vertex_project
  service            = local.providers.vertex.service
  disable_on_destroy = false
}

# Batch prediction jobs are project resources: project level is the only scope their
# roles can be granted at. user creates (and reads) jobs; viewer only reads them.
resource "google_project_iam_member" "vertex_user" {
  for_each   = local.vertex_users
  project    = local.vertex_project
  role       = "roles/aiplatform.user"
  member     = google_service_account.function[each.key].member
  depends_on = [google_project_service.vertex]
}

resource "google_project_iam_member" "vertex_viewer" {
  for_each   = local.vertex_viewers
  project    = local.vertex_project
  role       = "roles/aiplatform.viewer"
  member     = google_service_account.function[each.key].member
  depends_on = [google_project_service.vertex]
}

# The Vertex AI service agent, service-<project number>@gcp-sa-aiplatform.iam.gserviceaccount.com,
# created now rather than on the first job so that it can be granted the bucket below.
resource "google_project_service_identity" "vertex" {
  count      = local.vertex_enabled ? 1 : 0
  provider   = google-beta
  project    = local.vertex_project
  service    = local.providers.vertex.service
  depends_on = [google_project_service.vertex]
}

# Read the staged payloads (and list, which IAM checks on the bucket itself) ...
resource "google_storage_bucket_iam_member" "vertex_agent_reader" {
  count  = local.vertex_enabled ? 1 : 0
  bucket = google_storage_bucket.work.name
  role   = "roles/storage.objectViewer"
  member = google_project_service_identity.vertex[0].member
  condition {
    title       = "batchline-jobs-only"
    description = "Vertex AI batch jobs read the staged chunk payloads under jobs/."
    expression  = "resource.name == \"projects/_/buckets/${google_storage_bucket.work.name}\" || resource.name.startsWith(\"${local.vertex_agent_objects}\")"
  }
}

# ... and create the prediction files beside them (create-only: nothing is overwritten).
resource "google_storage_bucket_iam_member" "vertex_agent_creator" {
  count  = local.vertex_enabled ? 1 : 0
  bucket = google_storage_bucket.work.name
  role   = "roles/storage.objectCreator"
  member = google_project_service_identity.vertex[0].member
  condition {
    title       = "batchline-jobs-only"
    description = "Vertex AI batch jobs write their predictions under jobs/."
    expression  = "resource.name.startsWith(\"${local.vertex_agent_objects}\")"
  }
}

# With a customer-managed key on the buckets, the service agent may use it too.
resource "google_kms_crypto_key_iam_member" "vertex" {
  count         = local.vertex_enabled && var.kms_key != null ? 1 : 0
  crypto_key_id = var.kms_key
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = google_project_service_identity.vertex[0].member
}
