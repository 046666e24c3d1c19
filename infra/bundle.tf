# The functions' source, uploaded to the work bucket under sources/ and named by its MD5,
# so that a code change is a new object and redeploys the functions, and an unchanged
# package redeploys nothing. `make package` builds the zip reproducibly; a directory laid
# out the same way is zipped here instead.

locals {
  bundle_is_zip = endswith(var.bundle_path, ".zip")
  bundle = {
    path = local.bundle_is_zip ? var.bundle_path : data.archive_file.bundle[0].output_path
    name = (
      local.bundle_is_zip
      ? "sources/${basename(var.bundle_path)}"
      : "sources/batchline-functions-${data.archive_file.bundle[0].output_md5}.zip"
    )
  }
}

data "archive_file" "bundle" {
  count            = local.bundle_is_zip ? 0 : 1
  type             = "zip"
  source_dir       = var.bundle_path
  output_path      = "${path.module}/.terraform/batchline-functions.zip"
  output_file_mode = "0644"
  excludes         = ["**/__pycache__/**", "**/*.pyc"]
}

resource "google_storage_bucket_object" "bundle" {
  name         = local.bundle.name
  bucket       = google_storage_bucket.work.name
  source       = local.bundle.path
  content_type = "application/zip"
}
