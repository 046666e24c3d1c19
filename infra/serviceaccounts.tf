# One runtime service account per function with only what its code uses (local.access),
# and one build account. No project-wide storage, Pub/Sub or secret roles: grants are on
# the bucket, topic or secret itself.

resource "google_service_account" "function" {
  for_each     = local.functions
  project      = var.project_id
  account_id   = "${var.prefix}-${each.key}"
  display_name = "batchline ${each.key} function"
  description  = "Runtime identity of the ${each.key} function."
  depends_on   = [google_project_service.enabled]
}

locals {
  buckets = {
    input  = google_storage_bucket.input.name
    output = google_storage_bucket.output.name
    work   = google_storage_bucket.work.name
  }
  topics = {
    poll    = google_pubsub_topic.poll.name
    collect = google_pubsub_topic.collect.name
    events  = google_pubsub_topic.events.name
    notify  = google_pubsub_topic.notify.name
  }
  bucket_readers = merge([
    for f, a in local.access : { for b in a.read : "${f}/${b}" => { function = f, bucket = b } }
  ]...)
  bucket_creators = merge([
    for f, a in local.access : { for b in a.create : "${f}/${b}" => { function = f, bucket = b, under = lookup(a.create_under, b, null) } }
  ]...)
  topic_publishers = merge([
    for f, a in local.access : { for t in a.publish : "${f}/${t}" => { function = f, topic = t } }
  ]...)
}

resource "google_storage_bucket_iam_member" "reader" {
  for_each = local.bucket_readers
  bucket   = local.buckets[each.value.bucket]
  role     = "roles/storage.objectViewer"
  member   = google_service_account.function[each.value.function].member
}

resource "google_storage_bucket_iam_member" "creator" {
  for_each = local.bucket_creators
  bucket   = local.buckets[each.value.bucket]
  role     = "roles/storage.objectCreator"
  member   = google_service_account.function[each.value.function].member
  dynamic "condition" {
    for_each = each.value.under == null ? [] : [each.value.under]
    content {
      title       = "${each.value.function}-creates-under-${trimsuffix(condition.value, "/")}"
      description = "Only objects under ${condition.value} (local.access.${each.value.function}.create_under)."
      expression  = "resource.name.startsWith(\"projects/_/buckets/${local.buckets[each.value.bucket]}/objects/${condition.value}\")"
    }
  }
}

resource "google_pubsub_topic_iam_member" "publisher" {
  for_each = local.topic_publishers
  project  = var.project_id
  topic    = local.topics[each.value.topic]
  role     = "roles/pubsub.publisher"
  member   = google_service_account.function[each.value.function].member
}

# Firestore has no per-collection IAM: datastore.user (read and write documents) on the
# project is the narrowest role that lets the functions run transactions.
resource "google_project_iam_member" "firestore_user" {
  for_each = local.functions
  project  = var.project_id
  role     = "roles/datastore.user"
  member   = google_service_account.function[each.key].member
}

# The build account: writes build logs, pushes images to our repository, and reads the
# source (ours under sources/, and the copy Cloud Functions stages in its own bucket).
resource "google_service_account" "build" {
  project      = var.project_id
  account_id   = "${var.prefix}-build"
  display_name = "batchline functions build"
  description  = "Cloud Build identity that builds the batchline functions."
  depends_on   = [google_project_service.enabled]
}

resource "google_project_iam_member" "build" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.build.member
}

resource "google_artifact_registry_repository_iam_member" "build" {
  project    = var.project_id
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.build.member
}

resource "google_storage_bucket_iam_member" "build_sources" {
  bucket = google_storage_bucket.work.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
  condition {
    title       = "function-sources-only"
    description = "Only the function source zips, not the jobs' data."
    expression  = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.work.name}/objects/sources/\")"
  }
}

resource "google_project_iam_member" "build_staged_sources" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = google_service_account.build.member
  condition {
    title       = "cloud-functions-staged-sources"
    description = "The bucket where Cloud Functions stages a function's source for its build."
    expression  = "resource.name.startsWith(\"projects/_/buckets/gcf-v2-sources-${data.google_project.this.number}-${var.region}\")"
  }
}
