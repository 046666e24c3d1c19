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
  # Composite indexes the code's queries need, by name. The only query today,
  # `jobs` where state in [...active states], has one field and no order, so Firestore's
  # automatic single-field index serves it. tests/infra reads every query in the code and
  # fails if one needs a composite index that is not declared here. Each entry names its
  # collection, scope (COLLECTION or COLLECTION_GROUP) and fields in index order, each as
  # [field path, ASCENDING or DESCENDING].
  firestore_indexes = {}
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
      field_path = fields.value[0]
      order      = fields.value[1]
    }
  }
  depends_on = [google_firestore_database.default]
}
