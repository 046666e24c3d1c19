# Firestore in native mode: the "(default)" database, which the code opens
# (adapters/firestore.py). Jobs are documents in `jobs`, their chunks in `jobs/{id}/chunks`.

resource "google_firestore_database" "default" {
  count                             = var.firestore.create ? 1 : 0
  project                           = var.project_id
  name                              = "(default)"
  location_id                       = coalesce(var.firestore.location, var.region)
  type                              = "FIRESTORE_NATIVE"
  point_in_time_recovery_enablement = var.firestore.point_in_time_recovery ? "POINT_IN_TIME_RECOVERY_ENABLED" : "POINT_IN_TIME_RECOVERY_DISABLED"
  delete_protection_state           = var.firestore.delete_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy                   = var.firestore.deletion_policy
  depends_on                        = [google_project_service.enabled]
}

locals {
  # The indexes the code's queries need. tests/infra reads every query in the code and
  # fails unless one of these serves it.
  #
  # Composite indexes, by name: collection, scope (COLLECTION or COLLECTION_GROUP) and
  # fields in index order, each as [field path, ASCENDING, DESCENDING or CONTAINS].
  # `jobs` where state in [...active states] has one field and no order: none needed.
  # Listing jobs (FirestoreJobStore.list_jobs, GET /v1/jobs) orders by created_at, newest
  # first, within a range of it, filtered by state and/or one label (`label_pairs`, the
  # job's labels as key=value, array-contains); further labels are filtered in code.
  firestore_indexes = {
    jobs_by_state = {
      collection = "jobs"
      scope      = "COLLECTION"
      fields     = [["state", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    jobs_by_label = {
      collection = "jobs"
      scope      = "COLLECTION"
      fields     = [["label_pairs", "CONTAINS"], ["created_at", "DESCENDING"]]
    }
    jobs_by_state_and_label = {
      collection = "jobs"
      scope      = "COLLECTION"
      fields     = [["state", "ASCENDING"], ["label_pairs", "CONTAINS"], ["created_at", "DESCENDING"]]
    }
  }

  # Single-field index overrides, by name: collection group, field, and every index the
  # field keeps, each as [scope, ASCENDING, DESCENDING or CONTAINS]. An override replaces
  # Firestore's automatic indexes on that field (ascending, descending and array-contains,
  # collection scope only), so each entry restates those it keeps.
  firestore_field_indexes = {
    # Reconciling a lost submit asks which chunk recorded a batch id: a collection-group
    # query over every job's chunks (FirestoreJobStore.batch_recorded_by). Firestore keeps
    # no collection-group single-field index unless told to.
    chunks_batch_id = {
      collection = "chunks"
      field      = "batch_id"
      indexes = [
        ["COLLECTION", "ASCENDING"],
        ["COLLECTION", "DESCENDING"],
        ["COLLECTION", "CONTAINS"],
        ["COLLECTION_GROUP", "ASCENDING"],
      ]
    }
  }

  # Retention: with firestore.retention_days the code stamps `expire_at` (a timestamp) on a
  # job when it ends and on its chunks, and on an API idempotency key when it is claimed
  # (the retention plus a week), and a TTL policy on each collection group deletes them
  # once that time has passed. Without it nothing is stamped and no policy is made.
  ttl = {
    field       = "expire_at"
    collections = var.firestore.retention_days == null ? [] : ["jobs", "chunks", "idempotency_keys"]
  }
}

resource "google_firestore_index" "composite" {
  for_each    = local.firestore_indexes
  project     = var.project_id
  database    = "(default)"
  collection  = each.value.collection
  query_scope = each.value.scope
  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path   = fields.value[0]
      order        = fields.value[1] == "CONTAINS" ? null : fields.value[1]
      array_config = fields.value[1] == "CONTAINS" ? "CONTAINS" : null
    }
  }
  depends_on = [google_firestore_database.default]
}

resource "google_firestore_field" "index" {
  for_each   = local.firestore_field_indexes
  project    = var.project_id
  database   = "(default)"
  collection = each.value.collection
  field      = each.value.field
  index_config {
    dynamic "indexes" {
      for_each = each.value.indexes
      content {
        query_scope  = indexes.value[0]
        order        = indexes.value[1] == "CONTAINS" ? null : indexes.value[1]
        array_config = indexes.value[1] == "CONTAINS" ? "CONTAINS" : null
      }
    }
  }
  depends_on = [google_project_service.enabled, google_firestore_database.default]
}

resource "google_firestore_field" "ttl" {
  for_each   = toset(local.ttl.collections)
  project    = var.project_id
  database   = "(default)"
  collection = each.key
  field      = local.ttl.field
  ttl_config {}
  # No query reads expire_at, and indexing a timestamp that mostly grows with time makes
  # write hotspots (Firestore's TTL guidance): keep no single-field index on it.
  index_config {}
  # After the index override: several field changes at once, just after the database is
  # created, can fail with 409 (hashicorp/terraform-provider-google#16329).
  depends_on = [google_project_service.enabled, google_firestore_database.default, google_firestore_field.index]
}
