# Inputs. Only `project_id` and `bundle_path` have no default; `make deploy` passes
# `bundle_path` and reads the rest from infra/terraform.tfvars.

variable "project_id" {
  description = "Google Cloud project that receives everything."
  type        = string
  nullable    = false
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project id (6-30 lowercase letters, digits and hyphens), not a name or number."
  }
}

variable "region" {
  description = "Region of the functions, buckets, triggers, scheduler job and (by default) Firestore."
  type        = string
  default     = "us-central1"
  nullable    = false
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1 or europe-west1."
  }
}

variable "prefix" {
  description = "Prefix of every resource name (functions, topics, service accounts, secrets). The default makes the topic names equal to the code's defaults."
  type        = string
  default     = "batchline"
  nullable    = false
  validation {
    # 15 characters leaves room for the longest service account id, "<prefix>-collect-trigger" (30 max).
    condition     = can(regex("^[a-z][a-z0-9-]{1,13}[a-z0-9]$", var.prefix))
    error_message = "prefix must be 3-15 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "labels" {
  description = "Labels added to every resource that takes them (the provider's default_labels)."
  type        = map(string)
  default     = {}
  nullable    = false
  validation {
    condition = alltrue([
      for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))
    ])
    error_message = "Label keys and values must be lowercase letters, digits, '_' or '-' (keys start with a letter)."
  }
}

variable "bundle_path" {
  description = "The functions' source: the zip `make package` writes (dist/batchline-functions-<md5>.zip) or a directory laid out like it (main.py, requirements.txt, batchline/), which Terraform zips itself."
  type        = string
  nullable    = false
  validation {
    condition = (
      endswith(var.bundle_path, ".zip")
      ? try(strcontains(basename(var.bundle_path), filemd5(var.bundle_path)), false)
      : fileexists("${var.bundle_path}/main.py") && fileexists("${var.bundle_path}/requirements.txt")
    )
    error_message = "bundle_path must be a zip named by its own MD5 (run `make package`) or a directory holding main.py and requirements.txt."
  }
}

variable "enable_apis" {
  description = "Enable the Google APIs batchline needs. Turn off where a platform team enables APIs for you."
  type        = bool
  default     = true
  nullable    = false
}

variable "kms_key" {
  description = "Customer-managed key (projects/P/locations/L/keyRings/R/cryptoKeys/K) for the buckets, topics and secrets. It must be in the region (or a multi-region covering the buckets' location). Null keeps Google-managed encryption."
  type        = string
  default     = null
  validation {
    condition     = var.kms_key == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", var.kms_key))
    error_message = "kms_key must be a full crypto key id: projects/P/locations/L/keyRings/R/cryptoKeys/K."
  }
}

variable "buckets" {
  description = <<-EOT
    The input, output and work buckets.
    - location: bucket location, default the region. Eventarc's trigger on the input bucket is created in this location.
    - name_prefix: bucket names are "<name_prefix>-input|output|work"; default "<project_id>-<prefix>".
    - noncurrent_days: how long input and output keep overwritten or deleted versions.
    - work_retention_days: staged payloads, manifests and chunk results in the work bucket are deleted after this many days (an OpenAI batch ends within 24 hours, collect soon after).
    - force_destroy: let `make destroy` delete buckets that still hold objects.
  EOT
  type = object({
    location            = optional(string)
    name_prefix         = optional(string)
    noncurrent_days     = optional(number, 30)
    work_retention_days = optional(number, 14)
    force_destroy       = optional(bool, false)
  })
  default  = {}
  nullable = false
  validation {
    condition     = var.buckets.noncurrent_days >= 1 && var.buckets.work_retention_days >= 3
    error_message = "noncurrent_days must be at least 1 and work_retention_days at least 3 (work files must outlive the longest job)."
  }
  validation {
    condition     = var.buckets.name_prefix == null || can(regex("^[a-z0-9][a-z0-9_.-]{1,55}$", var.buckets.name_prefix))
    error_message = "buckets.name_prefix must be a valid start of a bucket name (at most 56 characters)."
  }
}

variable "firestore" {
  description = <<-EOT
    The Firestore database. The code uses the "(default)" database in native mode.
    - create: false when the project already has a (default) database (import it or leave it unmanaged).
    - location: Firestore location, default the region (nam5 or eur3 for multi-region).
    - point_in_time_recovery: keep 7 days of versions.
    - delete_protection: refuse deletion, even by Terraform.
    - deletion_policy: "ABANDON" leaves the database (and its jobs) in place on `make destroy`; "DELETE" deletes it.
    - retention_days (BATCHLINE_RETENTION_DAYS): keep a finished job's records (the job and its chunks) this many days, then let a Firestore TTL policy delete them (typically within a day after). Null keeps them forever. Results in the output bucket are not affected; an Idempotency-Key is remembered only as long as its job's records.
  EOT
  type = object({
    create                 = optional(bool, true)
    location               = optional(string)
    point_in_time_recovery = optional(bool, true)
    delete_protection      = optional(bool, false)
    deletion_policy        = optional(string, "ABANDON")
    retention_days         = optional(number)
  })
  default  = {}
  nullable = false
  validation {
    condition     = contains(["ABANDON", "DELETE"], var.firestore.deletion_policy)
    error_message = "firestore.deletion_policy must be ABANDON or DELETE."
  }
  validation {
    # A day at least: a storage event can be redelivered for up to a day, and a job id is
    # recognised as already done only while its record exists.
    condition     = var.firestore.retention_days == null || try(var.firestore.retention_days >= 1, false)
    error_message = "firestore.retention_days must be at least 1 (or null to keep finished jobs forever)."
  }
}

variable "pubsub" {
  description = <<-EOT
    Topics and subscriptions.
    - message_retention: how long the collect, events and dead-letter topics and the subscriptions keep messages (600s to 604800s).
    - dead_letter_attempts: deliveries of a job.completed event before it moves to the dead-letter topic (5-100).
    - events_subscription: create a pull subscription on the events topic (read job.completed with `gcloud pubsub subscriptions pull`).
  EOT
  type = object({
    message_retention    = optional(string, "604800s")
    dead_letter_attempts = optional(number, 10)
    events_subscription  = optional(bool, true)
  })
  default  = {}
  nullable = false
  validation {
    condition = (
      can(regex("^[0-9]+s$", var.pubsub.message_retention))
      && tonumber(trimsuffix(var.pubsub.message_retention, "s")) >= 600
      && tonumber(trimsuffix(var.pubsub.message_retention, "s")) <= 604800
    )
    error_message = "pubsub.message_retention must be between \"600s\" and \"604800s\"."
  }
  validation {
    condition     = var.pubsub.dead_letter_attempts >= 5 && var.pubsub.dead_letter_attempts <= 100
    error_message = "pubsub.dead_letter_attempts must be between 5 and 100 (Pub/Sub's limits)."
  }
}

variable "poll_schedule" {
  description = "Cloud Scheduler job that publishes a tick to the poll topic: cron schedule, time zone, paused."
  type = object({
    cron      = optional(string, "*/2 * * * *")
    time_zone = optional(string, "Etc/UTC")
    paused    = optional(bool, false)
  })
  default  = {}
  nullable = false
  validation {
    condition     = length(split(" ", trimspace(var.poll_schedule.cron))) == 5
    error_message = "poll_schedule.cron must be a five-field cron expression, e.g. \"*/2 * * * *\"."
  }
}

variable "functions" {
  description = <<-EOT
    Runtime and per-function sizing. For each function:
    - memory: "512M", "1Gi", ...; cpu: "0.583", "1", "2", ... (concurrency above 1 needs cpu of at least 1).
    - timeout: seconds; at most 540 for the event functions (submit, poll, collect, notify), 3600 for api.
    - max_instances, min_instances, concurrency (requests per instance). poll's max_instances is how many jobs are
      advanced at once: a tick publishes one message per active job, each its own invocation.
    - retry: event functions only; true retries a failed invocation (the code raises only for retryable failures).
  EOT
  type = object({
    runtime = optional(string, "python311")
    submit = optional(object({
      memory        = optional(string, "1Gi")
      cpu           = optional(string, "1")
      timeout       = optional(number, 540)
      max_instances = optional(number, 20)
      min_instances = optional(number, 0)
      concurrency   = optional(number, 1)
      retry         = optional(bool, true)
    }), {})
    poll = optional(object({
      memory        = optional(string, "1Gi")
      cpu           = optional(string, "1")
      timeout       = optional(number, 540)
      max_instances = optional(number, 20)
      min_instances = optional(number, 0)
      concurrency   = optional(number, 1)
      retry         = optional(bool, false)
    }), {})
    collect = optional(object({
      memory        = optional(string, "1Gi")
      cpu           = optional(string, "1")
      timeout       = optional(number, 540)
      max_instances = optional(number, 10)
      min_instances = optional(number, 0)
      concurrency   = optional(number, 1)
      retry         = optional(bool, true)
    }), {})
    notify = optional(object({
      memory        = optional(string, "256Mi")
      cpu           = optional(string, "0.167")
      timeout       = optional(number, 60)
      max_instances = optional(number, 10)
      min_instances = optional(number, 0)
      concurrency   = optional(number, 1)
      retry         = optional(bool, true)
    }), {})
    api = optional(object({
      memory        = optional(string, "1Gi")
      cpu           = optional(string, "1")
      timeout       = optional(number, 540)
      max_instances = optional(number, 10)
      min_instances = optional(number, 0)
      concurrency   = optional(number, 8)
    }), {})
  })
  default  = {}
  nullable = false
  validation {
    # CI builds and tests the package on Python 3.11 only.
    condition     = contains(["python311", "python312"], var.functions.runtime)
    error_message = "functions.runtime must be python311 or python312."
  }
  validation {
    condition = alltrue([
      for f in [var.functions.submit, var.functions.poll, var.functions.collect, var.functions.notify] : f.timeout >= 60 && f.timeout <= 540
    ]) && var.functions.api.timeout >= 10 && var.functions.api.timeout <= 3600
    error_message = "Timeouts: 60-540 s for submit, poll, collect and notify (event functions); 10-3600 s for api."
  }
  validation {
    condition = alltrue([
      for f in [var.functions.submit, var.functions.poll, var.functions.collect, var.functions.notify, var.functions.api] :
      can(regex("^[0-9]+(M|Mi|G|Gi)$", f.memory))
      && f.max_instances >= 1 && f.min_instances >= 0 && f.min_instances <= f.max_instances
      && f.concurrency >= 1 && f.concurrency <= 1000
      && (f.concurrency == 1 || tonumber(f.cpu) >= 1)
    ])
    error_message = "Each function needs memory like \"1Gi\", 1 <= max_instances, 0 <= min_instances <= max_instances, 1 <= concurrency <= 1000, and cpu >= 1 when concurrency > 1."
  }
}

variable "settings" {
  description = <<-EOT
    The functions' settings, passed as the environment variables `shared/batchline/config.py` reads. Null leaves a
    setting to the code's default (see the README's Configuration table).
    - default_model (BATCHLINE_DEFAULT_MODEL): model for lines and jobs without one, "provider/model" (its provider must be in enabled_providers), or "auto".
    - openai_base_url (BATCHLINE_OPENAI_BASE_URL): another OpenAI-compatible endpoint.
    - openai_max_requests, openai_max_bytes: OpenAI chunk limits.
    - anthropic_base_url (BATCHLINE_ANTHROPIC_BASE_URL): another Anthropic endpoint.
    - anthropic_max_requests, anthropic_max_bytes: Anthropic chunk limits (bytes of request body).
    - anthropic_max_tokens (BATCHLINE_ANTHROPIC_MAX_TOKENS): max_tokens for Anthropic requests that give none.
    - vertex_project (BATCHLINE_VERTEX_PROJECT): project the Vertex AI batch jobs run in; default project_id. Its API, roles and service agent's grants are set up there.
    - vertex_location (BATCHLINE_VERTEX_LOCATION): region of the Vertex AI batch jobs; default the deployment's region (it must offer Gemini batch prediction for the models used).
    - vertex_max_requests, vertex_max_bytes: Vertex AI chunk limits (requests and bytes of input file per job).
    - max_input_bytes, max_line_bytes: file and line limits.
    - lease_seconds: how soon a dead holder (planner, submitter, a job's advancer, the Anthropic create lock) is noticed: a lease not renewed for this long is taken over.
    - heartbeat_seconds: how often a live holder renews its leases while it works (at most a third of lease_seconds; 0 never).
    - max_hold_seconds: how long a call may take: the longest a holder keeps renewing a lease; must outlive any invocation (longer than every function's timeout).
    - work_budget_seconds: time submit, poll and api spend planning and submitting before leaving work to the next tick; at least 60 s under their timeouts.
    - collect_retry_seconds: re-request a collect that has not finished after this long.
    - max_repair_attempts (BATCHLINE_MAX_REPAIR_ATTEMPTS): times an answer that fails its schema is asked again (0-5); a job's own option overrides it.
    - prices (BATCHLINE_PRICES): price table overrides, a JSON object {"provider/model": {"input": .., "output": .., ...}} per 1M tokens, and model capabilities (see the README's Cost section).
    - auto_candidates (BATCHLINE_AUTO_CANDIDATES): the models `model: "auto"` chooses from when a job names none, comma-separated "provider/model"; default one per enabled provider (its cheapest in the price table).
    - quotas (BATCHLINE_QUOTAS): what each provider lets your account have in flight, a JSON object {"provider/model" or "provider": {"<unit>": n}}, e.g. {"openai/gpt-4.1-mini": {"enqueued_tokens": 20000000}, "anthropic": {"queued_requests": 200000}, "vertex/gemini-2.5-flash": {"concurrent_jobs": 8}}; unset: the lowest paid tier's (see the README's Provider quotas section).
    - quota_backoff_seconds (BATCHLINE_QUOTA_BACKOFF_SECONDS): first wait of a chunk a provider's quota sent back (doubled each time, at most 30 minutes).
    - quota_wait_seconds (BATCHLINE_QUOTA_WAIT_SECONDS): how long a job waiting for a quota keeps its place without asking again (more than a poll tick).
  EOT
  type = object({
    default_model          = optional(string)
    openai_base_url        = optional(string)
    openai_max_requests    = optional(number)
    openai_max_bytes       = optional(number)
    anthropic_base_url     = optional(string)
    anthropic_max_requests = optional(number)
    anthropic_max_bytes    = optional(number)
    anthropic_max_tokens   = optional(number)
    vertex_project         = optional(string)
    vertex_location        = optional(string)
    vertex_max_requests    = optional(number)
    vertex_max_bytes       = optional(number)
    max_input_bytes        = optional(number)
    max_line_bytes         = optional(number)
    lease_seconds          = optional(number, 60)
    heartbeat_seconds      = optional(number, 10)
    max_hold_seconds       = optional(number, 900)
    work_budget_seconds    = optional(number, 420)
    collect_retry_seconds  = optional(number, 600)
    max_repair_attempts    = optional(number)
    prices                 = optional(string)
    auto_candidates        = optional(string)
    quotas                 = optional(string)
    quota_backoff_seconds  = optional(number)
    quota_wait_seconds     = optional(number)
  })
  default  = {}
  nullable = false
  validation {
    condition     = var.settings.max_repair_attempts == null || try(var.settings.max_repair_attempts >= 0 && var.settings.max_repair_attempts <= 5 && floor(var.settings.max_repair_attempts) == var.settings.max_repair_attempts, false)
    error_message = "settings.max_repair_attempts must be a whole number from 0 to 5."
  }
  validation {
    condition     = var.settings.prices == null || can(jsondecode(var.settings.prices))
    error_message = "settings.prices must be a JSON object of price overrides."
  }
  validation {
    condition     = var.settings.quotas == null || can(keys(jsondecode(var.settings.quotas)))
    error_message = "settings.quotas must be a JSON object of provider or provider/model quotas."
  }
  validation {
    condition     = alltrue([for v in [var.settings.quota_backoff_seconds, var.settings.quota_wait_seconds] : v == null || try(v > 0, false)])
    error_message = "settings.quota_backoff_seconds and quota_wait_seconds must be positive."
  }
  validation {
    condition     = var.settings.default_model == null || var.settings.default_model == "auto" || can(regex("^[a-z]+/.+$", var.settings.default_model))
    error_message = "settings.default_model must look like provider/model, e.g. openai/gpt-4.1-mini, or be auto."
  }
  validation {
    condition = var.settings.default_model == null || var.settings.default_model == "auto" || try(
      contains(var.enabled_providers, split("/", var.settings.default_model)[0]), false
    )
    error_message = "settings.default_model names a provider that is not in enabled_providers (it would not be set up)."
  }
  validation {
    condition     = var.settings.vertex_project == null || can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.settings.vertex_project))
    error_message = "settings.vertex_project must be a project id (6-30 lowercase letters, digits and hyphens)."
  }
  validation {
    condition     = var.settings.vertex_location == null || can(regex("^([a-z]+-[a-z]+[0-9]+|global)$", var.settings.vertex_location))
    error_message = "settings.vertex_location must be a Google Cloud region such as us-central1 (or global)."
  }
  validation {
    condition = alltrue([
      for v in [
        var.settings.openai_max_requests, var.settings.openai_max_bytes,
        var.settings.anthropic_max_requests, var.settings.anthropic_max_bytes, var.settings.anthropic_max_tokens,
        var.settings.vertex_max_requests, var.settings.vertex_max_bytes,
        var.settings.max_input_bytes, var.settings.max_line_bytes,
      ] : v == null || try(v >= 1 && floor(v) == v, false)
    ])
    error_message = "The settings' request, byte and token limits must be whole numbers of at least 1."
  }
  validation {
    condition = (
      var.settings.work_budget_seconds >= 30
      && var.settings.work_budget_seconds + 60 <= min(var.functions.submit.timeout, var.functions.poll.timeout, var.functions.api.timeout)
    )
    error_message = "settings.work_budget_seconds must leave at least 60 s of the submit, poll and api timeouts for the work in flight."
  }
  validation {
    condition = var.settings.max_hold_seconds > max(
      var.functions.submit.timeout, var.functions.poll.timeout, var.functions.collect.timeout, var.functions.api.timeout
    )
    error_message = "settings.max_hold_seconds must be longer than every function's timeout, or a live invocation's lease could be taken over."
  }
  validation {
    condition     = var.settings.lease_seconds >= 15 && var.settings.heartbeat_seconds >= 0 && var.settings.heartbeat_seconds * 3 <= var.settings.lease_seconds
    error_message = "settings.lease_seconds must be at least 15 s and three heartbeats (heartbeat_seconds) long."
  }
  validation {
    condition     = var.settings.collect_retry_seconds > var.functions.collect.timeout
    error_message = "settings.collect_retry_seconds must be longer than the collect timeout, or a running collect is requested again."
  }
}

variable "enabled_providers" {
  description = "Providers this deployment runs, e.g. [\"openai\", \"anthropic\", \"vertex\"]. openai and anthropic each get a Secret Manager secret for their API key (OPENAI_API_KEY, ANTHROPIC_API_KEY), mounted into the functions that call providers; `make deploy` fills an empty one from the variable of that name and stops if it is not set. Terraform creates the secret only, never its value. vertex has no key: it enables aiplatform.googleapis.com and grants the functions and the Vertex AI service agent what batch prediction needs. The functions get the list as BATCHLINE_ENABLED_PROVIDERS: a line for a provider left out is invalid (\"provider ... is not enabled in this deployment\"); nothing else is affected."
  type        = set(string)
  default     = ["openai"]
  nullable    = false
  validation {
    condition     = length(var.enabled_providers) > 0 && alltrue([for p in var.enabled_providers : contains(["openai", "anthropic", "vertex"], p)])
    error_message = "enabled_providers must list at least one of \"openai\", \"anthropic\" and \"vertex\", and nothing else."
  }
}

variable "api_invokers" {
  description = "Principals allowed to call the api function, e.g. [\"user:me@example.com\", \"serviceAccount:app@p.iam.gserviceaccount.com\", \"group:team@example.com\"]. Nobody else can."
  type        = list(string)
  default     = []
  nullable    = false
  validation {
    condition = alltrue([
      for m in var.api_invokers : can(regex("^(user|serviceAccount|group|domain|principal|principalSet):.+$", m))
    ])
    error_message = "api_invokers must be IAM principals such as user:EMAIL, serviceAccount:EMAIL or group:EMAIL; allUsers and allAuthenticatedUsers are refused."
  }
}

variable "webhooks" {
  description = <<-EOT
    Webhooks (README "Webhooks").
    - openai_inbound: accept OpenAI's batch.* webhooks on the api function (POST /v1/webhooks/openai), which then
      advances the batch's job at once. Creates the OPENAI_WEBHOOK_SECRET secret, mounted into api only; make deploy
      fills it from OPENAI_WEBHOOK_SECRET (the secret OpenAI's dashboard shows for the endpoint). OpenAI's requests
      carry no Google identity: the api function's IAM invocation (api_invokers) must let them through (see README).
    Jobs' own webhooks (the notify_url option) need nothing here: they are signed with the deployment's
    BATCHLINE_WEBHOOK_SECRET, which make deploy creates when it has none.
  EOT
  type = object({
    openai_inbound = optional(bool, false)
  })
  default  = {}
  nullable = false
}
