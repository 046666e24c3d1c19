# Names, the functions' table, their settings, and the APIs everything else needs.

locals {
  labels          = merge({ app = "batchline" }, var.labels)
  bucket_prefix   = coalesce(var.buckets.name_prefix, "${var.project_id}-${var.prefix}")
  bucket_location = upper(coalesce(var.buckets.location, var.region))

  # The functions: the entry point in functions/main.py and what triggers it.
  # tests/infra checks every entry point exists with the signature its trigger needs
  # (storage and pubsub: @functions_framework.cloud_event; http: @functions_framework.http).
  functions = {
    submit  = { entry_point = "submit", trigger = "storage", topic = null }
    poll    = { entry_point = "poll", trigger = "pubsub", topic = "poll" }
    collect = { entry_point = "collect", trigger = "pubsub", topic = "collect" }
    notify  = { entry_point = "notify", trigger = "pubsub", topic = "notify" }
    api     = { entry_point = "api", trigger = "http", topic = null }
  }
  function_config = {
    submit  = var.functions.submit
    poll    = var.functions.poll
    collect = var.functions.collect
    notify  = var.functions.notify
    api     = merge(var.functions.api, { retry = null })
  }

  # What each function's code reads, creates and publishes to, and nothing more. Every
  # write is create-only (if_generation_match=0), so no function can overwrite or delete.
  # submit and poll plan jobs (read input, stage in work, may reject into output); poll
  # publishes to its own topic (a tick fans out one message per active job);
  # collect merges chunk results from work into output (and lists a Vertex AI job's
  # prediction files there: objectViewer covers list); those three reach a provider client.
  # notify only POSTs the webhooks it is handed (and notes the outcome on the job).
  # api is the edge, reached by callers: it reads the input bucket (a caller's input_uri,
  # checked and, for an estimate, planned dry) and the output bucket (a job's summary and
  # results: what the API is for; it follows only the job record's own output prefix),
  # creates only its staged inline requests (work, under inline/: create_under), never
  # reads the work bucket (other jobs' working data), calls no provider and asks poll to
  # plan.
  # provider_keys: the API key secrets are mounted. vertex: the Vertex AI role granted when
  # vertex is enabled (vertex.tf): "user" where the code creates batch prediction jobs,
  # "viewer" where it only reads them (collect). tests/infra derives the topics, the
  # provider use and the Vertex AI calls from the code's call graph and fails if this table
  # grants more or fewer, or gives a function reached over HTTP read on work, or create on
  # work or output beyond a prefix.
  access = {
    submit  = { read = ["input", "work"], create = ["work", "output"], create_under = {}, names_only = [], publish = ["collect", "events", "notify"], provider_keys = true, vertex = "user" }
    poll    = { read = ["input", "work"], create = ["work", "output"], create_under = {}, names_only = [], publish = ["poll", "collect", "events", "notify"], provider_keys = true, vertex = "user" }
    collect = { read = ["work", "output"], create = ["work", "output"], create_under = {}, names_only = [], publish = ["collect", "events", "notify"], provider_keys = true, vertex = "viewer" }
    notify  = { read = [], create = [], create_under = {}, names_only = [], publish = [], provider_keys = false, vertex = null }
    api     = { read = ["input", "output"], create = ["work"], create_under = { work = "inline/" }, names_only = [], publish = ["poll"], provider_keys = false, vertex = null }
  }

  # Settings, under the names shared/batchline/config.py reads (tests/infra checks both ways).
  environment = {
    GOOGLE_CLOUD_PROJECT            = var.project_id
    BATCHLINE_INPUT_BUCKET          = google_storage_bucket.input.name
    BATCHLINE_OUTPUT_BUCKET         = google_storage_bucket.output.name
    BATCHLINE_WORK_BUCKET           = google_storage_bucket.work.name
    BATCHLINE_POLL_TOPIC            = google_pubsub_topic.poll.name
    BATCHLINE_COLLECT_TOPIC         = google_pubsub_topic.collect.name
    BATCHLINE_EVENTS_TOPIC          = google_pubsub_topic.events.name
    BATCHLINE_NOTIFY_TOPIC          = google_pubsub_topic.notify.name
    BATCHLINE_LEASE_SECONDS         = var.settings.lease_seconds
    BATCHLINE_HEARTBEAT_SECONDS     = var.settings.heartbeat_seconds
    BATCHLINE_MAX_HOLD_SECONDS      = var.settings.max_hold_seconds
    BATCHLINE_WORK_BUDGET_SECONDS   = var.settings.work_budget_seconds
    BATCHLINE_COLLECT_RETRY_SECONDS = var.settings.collect_retry_seconds
    # Lines for a provider not listed are invalid ("not enabled in this deployment").
    BATCHLINE_ENABLED_PROVIDERS = join(",", sort(tolist(var.enabled_providers)))
    # Vertex AI batch jobs run in the deployment's region unless told otherwise.
    BATCHLINE_VERTEX_LOCATION = coalesce(var.settings.vertex_location, var.region)
  }
  # Set only when given; otherwise the code's default applies. BATCHLINE_RETENTION_DAYS is
  # set exactly when the TTL policies exist (firestore.tf, local.ttl; tests/infra checks it).
  # BATCHLINE_VERTEX_API_ENDPOINT is never set: it points the code at the local emulator.
  optional_environment = {
    BATCHLINE_DEFAULT_MODEL          = var.settings.default_model
    BATCHLINE_OPENAI_BASE_URL        = var.settings.openai_base_url
    BATCHLINE_OPENAI_MAX_REQUESTS    = var.settings.openai_max_requests
    BATCHLINE_OPENAI_MAX_BYTES       = var.settings.openai_max_bytes
    BATCHLINE_ANTHROPIC_BASE_URL     = var.settings.anthropic_base_url
    BATCHLINE_ANTHROPIC_MAX_REQUESTS = var.settings.anthropic_max_requests
    BATCHLINE_ANTHROPIC_MAX_BYTES    = var.settings.anthropic_max_bytes
    BATCHLINE_ANTHROPIC_MAX_TOKENS   = var.settings.anthropic_max_tokens
    BATCHLINE_VERTEX_PROJECT         = var.settings.vertex_project
    BATCHLINE_VERTEX_MAX_REQUESTS    = var.settings.vertex_max_requests
    BATCHLINE_VERTEX_MAX_BYTES       = var.settings.vertex_max_bytes
    BATCHLINE_MAX_INPUT_BYTES        = var.settings.max_input_bytes
    BATCHLINE_MAX_LINE_BYTES         = var.settings.max_line_bytes
    BATCHLINE_RETENTION_DAYS         = var.firestore.retention_days
    BATCHLINE_MAX_REPAIR_ATTEMPTS    = var.settings.max_repair_attempts
    BATCHLINE_PRICES                 = var.settings.prices
    BATCHLINE_AUTO_CANDIDATES        = var.settings.auto_candidates
    BATCHLINE_QUOTAS                 = var.settings.quotas
    BATCHLINE_QUOTA_BACKOFF_SECONDS  = var.settings.quota_backoff_seconds
    BATCHLINE_QUOTA_WAIT_SECONDS     = var.settings.quota_wait_seconds
  }
  function_environment = merge(
    { for k, v in local.environment : k => tostring(v) },
    { for k, v in local.optional_environment : k => tostring(v) if v != null },
  )

  # The providers, and how each authenticates. api_key_env: the variable its API key is
  # mounted as; each such provider in var.enabled_providers gets a Secret Manager secret,
  # mounted into the functions whose code calls a provider (local.access). A key provider
  # left out has no secret: its lines fail with "<env> is not set", and nothing else does.
  # api_key_env = null: the provider is a Google API (`service`) called as the function's
  # own service account, with no key and no secret; enabling it enables the API and grants
  # the roles (vertex.tf). tests/infra checks these against the code's providers, the key
  # variables their clients read and the Google APIs their adapters call.
  providers = {
    openai    = { api_key_env = "OPENAI_API_KEY", service = null }
    anthropic = { api_key_env = "ANTHROPIC_API_KEY", service = null }
    vertex    = { api_key_env = null, service = "aiplatform.googleapis.com" }
  }
  api_key_secrets = {
    for k, p in local.providers : k => { env = p.api_key_env }
    if p.api_key_env != null && contains(var.enabled_providers, k)
  }

  # Webhook secrets, each mounted as `env` into the named functions only: notify signs the
  # jobs' job.completed webhooks with the deployment's secret (make deploy makes one when
  # there is none); api checks OpenAI's webhooks with the secret OpenAI's dashboard gave
  # (OPENAI_WEBHOOK_SECRET), only when var.webhooks.openai_inbound is on.
  # tests/infra checks that each goes to exactly the functions whose code reads it.
  webhooks = {
    notify = { env = "BATCHLINE_WEBHOOK_SECRET", functions = ["notify"], enabled = true }
    openai = { env = "OPENAI_WEBHOOK_SECRET", functions = ["api"], enabled = var.webhooks.openai_inbound }
  }
  webhook_secrets = { for k, w in local.webhooks : k => w if w.enabled }

  services = concat([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ], var.kms_key == null ? [] : ["cloudkms.googleapis.com"])
}

data "google_project" "this" {
  project_id = var.project_id
}

resource "google_project_service" "enabled" {
  for_each           = var.enable_apis ? toset(local.services) : toset([])
  project            = var.project_id
  service            = each.key
  disable_on_destroy = false
}
