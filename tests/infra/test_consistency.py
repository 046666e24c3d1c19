"""infra/ against the code: the checks in consistency.py pass on the repository, and each
one fails on a copy of infra/ or of the code with one thing changed."""

from __future__ import annotations

import re

import pytest

from batchline.config import Settings

from . import consistency as c

README = c.ROOT / "README.md"


@pytest.fixture(scope="module")
def infra_files() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(c.INFRA.glob("*.tf"))}


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return c.deployed_sources()


@pytest.fixture(scope="module")
def infra(infra_files: dict[str, str]) -> c.InfraFacts:
    return c.infra_facts_from(infra_files)


@pytest.fixture(scope="module")
def code(sources: dict[str, str]) -> c.CodeFacts:
    return c.code_facts(sources)


def changed(files: dict[str, str], name: str, old: str, new: str) -> dict[str, str]:
    """A copy of `files` with `old` replaced by `new` in files[name] (which must hold it)."""
    assert old in files[name], f"{old!r} not in {name}: update the test with the code"
    return {**files, name: files[name].replace(old, new)}


def problems_with_infra(files: dict[str, str], code: c.CodeFacts) -> list[str]:
    return c.check(c.infra_facts_from(files), code)


def problems_with_code(infra: c.InfraFacts, sources: dict[str, str]) -> list[str]:
    return c.check(infra, c.code_facts(sources))


def assert_reported(problems: list[str], *fragments: str) -> None:
    for fragment in fragments:
        assert any(fragment in p for p in problems), f"no problem mentions {fragment!r}: {problems}"


# ----------------------------------------------------------------- the repository agrees


def test_infra_and_code_agree(infra: c.InfraFacts, code: c.CodeFacts) -> None:
    assert c.check(infra, code) == []


def test_the_code_facts_are_what_the_checks_rely_on(code: c.CodeFacts) -> None:
    # If the extraction silently found nothing, every check would pass vacuously.
    assert code.entry_points == {
        "submit": "cloudevent",
        "poll": "cloudevent",
        "collect": "cloudevent",
        "notify": "cloudevent",
        "api": "http",
    }
    assert {
        "BATCHLINE_INPUT_BUCKET",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GOOGLE_CLOUD_PROJECT",
        "BATCHLINE_RETENTION_DAYS",
    } <= code.env_read
    assert frozenset({"BATCHLINE_WORK_BUCKET"}) in code.required_env
    assert {"BATCHLINE_RETENTION_DAYS", "BATCHLINE_ANTHROPIC_MAX_TOKENS"} <= code.numeric_env
    # collect fans out: one message per chunk on its own topic
    assert code.uses["collect"].published == {"collect_topic", "events_topic", "notify_topic"}
    assert code.uses["poll"].published == {
        "poll_topic",  # a tick fans out one message per job to the poll function itself
        "collect_topic",
        "events_topic",
        "notify_topic",
    }
    assert code.uses["notify"].published == frozenset()
    assert all(
        use.uses_providers for name, use in code.uses.items() if name not in ("api", "notify")
    )
    assert not code.uses["api"].uses_providers and not code.uses["notify"].uses_providers
    # Webhook secrets: read by the function that signs (notify) and the one that verifies
    # OpenAI's (api), and nowhere else.
    assert {"webhook_secret", "openai_webhook_secret"} <= code.secret_settings
    assert "webhook_secret" in code.uses["notify"].settings
    assert "openai_webhook_secret" in code.uses["api"].settings
    assert not {"webhook_secret", "openai_webhook_secret"} & (
        code.uses["poll"].settings | code.uses["collect"].settings | code.uses["submit"].settings
    )
    assert {"openai", "anthropic"} <= code.providers
    assert code.queries, "no Firestore query found in the code"
    assert any(q.scope == "COLLECTION_GROUP" and q.collection == "chunks" for q in code.queries)
    assert code.expiry_fields == {
        "jobs": {"expire_at"},
        "chunks": {"expire_at"},
        "idempotency_keys": {"expire_at"},
    }
    assert "jobs/" in code.work_prefixes
    assert code.payload_prefix == "jobs/"
    # Providers: how each authenticates, and what each ProviderClient method does.
    facts = code.provider_facts
    assert facts["openai"].api_key_env == {"OPENAI_API_KEY"} and facts["openai"].google_api is None
    assert facts["vertex"].api_key_env == frozenset()
    assert facts["vertex"].google_api == "aiplatform.googleapis.com" and facts["vertex"].agent_io
    assert facts["vertex"].methods["create_batch"][1] == {"create_batch_prediction_job"}
    assert facts["vertex"].methods["iter_results"][0] == {"list_prefix", "open_read"}
    # cancel: a job canceled while it is planned, or a duplicate batch of a stalled submit;
    # upload_input/discard_input: a chunk waiting for its quota has its input uploaded ahead.
    assert code.uses["submit"].provider_methods == {
        "create_batch",
        "find_batches",
        "get_batch",
        "cancel",
        "upload_input",
        "discard_input",
    }
    assert code.uses["collect"].provider_methods == {"get_batch", "iter_results"}
    assert "list_prefix" in code.uses["collect"].blob_operations
    assert "BATCHLINE_VERTEX_API_ENDPOINT" in code.env_read


def test_settings_load_from_the_environment_infra_sets(
    infra: c.InfraFacts, code: c.CodeFacts
) -> None:
    """The real Settings.from_env accepts what the functions get, and each bucket and topic
    setting comes from the variable infra sets for it."""
    env = c.sample_environment(infra, code.numeric_env)
    settings = Settings.from_env(env)
    assert settings.input_bucket == env["BATCHLINE_INPUT_BUCKET"]
    assert settings.work_bucket == env["BATCHLINE_WORK_BUCKET"]
    assert settings.collect_topic == env["BATCHLINE_COLLECT_TOPIC"]
    assert settings.events_topic == env["BATCHLINE_EVENTS_TOPIC"]
    openai, anthropic, vertex = (settings.provider(n) for n in ("openai", "anthropic", "vertex"))
    assert openai.api_key == env["OPENAI_API_KEY"]
    assert anthropic.api_key == env["ANTHROPIC_API_KEY"]
    assert anthropic.max_tokens == int(env["BATCHLINE_ANTHROPIC_MAX_TOKENS"])
    assert settings.retention_days == float(env["BATCHLINE_RETENTION_DAYS"])
    assert settings.enabled_providers == set(env["BATCHLINE_ENABLED_PROVIDERS"].split(","))
    assert vertex.project == env["BATCHLINE_VERTEX_PROJECT"]
    assert vertex.location == env["BATCHLINE_VERTEX_LOCATION"]
    assert vertex.limits.max_requests == int(env["BATCHLINE_VERTEX_MAX_REQUESTS"])
    assert vertex.api_endpoint is None  # never set by infra: the emulator's


def test_every_variable_is_typed_and_described(infra: c.InfraFacts) -> None:
    for name, variable in infra.variables.items():
        assert "type" in variable and variable.get("description"), f"var.{name}"


def test_tfvars_example_sets_only_declared_variables(infra: c.InfraFacts) -> None:
    text = (c.INFRA / "terraform.tfvars.example").read_text()
    example = {k for k in c.parse_hcl(text) if not k.startswith("__")}
    optional = set(re.findall(r"^# (\w+)\s+=", text, flags=re.MULTILINE))
    assert "project_id" in example
    assert example | optional <= set(infra.variables), (example | optional) - set(infra.variables)


def test_readme_lists_every_api_infra_enables(infra: c.InfraFacts) -> None:
    readme = README.read_text()
    assert "\n## Deploy to Google Cloud\n" in readme
    section = readme.split("\n## Deploy to Google Cloud\n", 1)[1].split("\n## ", 1)[0]
    services = re.findall(r"[a-z]+\.googleapis\.com", str(infra.locals["services"]))
    services += [p["service"] for p in infra.locals["providers"].values() if p["service"]]
    assert "aiplatform.googleapis.com" in services
    for service in services:
        assert service in section, f"README's deploy section does not list {service}"


# ------------------------------------------------------------ entry points and signatures


def test_renamed_entry_point_in_infra_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(infra_files, "main.tf", 'entry_point = "poll"', 'entry_point = "poll_tick"')
    assert_reported(
        problems_with_infra(files, code),
        "entry point 'poll_tick' is not a decorated function",
        "defines entry point 'poll' that infra does not deploy",
    )


def test_renamed_entry_point_in_code_is_reported(
    infra: c.InfraFacts, sources: dict[str, str]
) -> None:
    mutated = {**sources, "main": sources["main"].replace("def collect(", "def collect_job(")}
    assert mutated != sources
    assert_reported(
        problems_with_code(infra, mutated),
        "entry point 'collect' is not a decorated function",
        "defines entry point 'collect_job' that infra does not deploy",
    )


def test_wrong_signature_is_reported(infra: c.InfraFacts, sources: dict[str, str]) -> None:
    mutated = {
        **sources,
        "main": sources["main"].replace(
            "@functions_framework.http\ndef api", "@functions_framework.cloud_event\ndef api"
        ),
    }
    assert mutated != sources
    assert_reported(
        problems_with_code(infra, mutated),
        "'api' is cloudevent in functions/main.py but its http trigger needs http",
    )


# ---------------------------------------------------------------- environment variables


def test_renamed_env_var_in_infra_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(infra_files, "main.tf", "BATCHLINE_WORK_BUCKET ", "BATCHLINE_WORKBUCKET ")
    assert_reported(
        problems_with_infra(files, code),
        "infra sets environment variable BATCHLINE_WORKBUCKET but the code never reads it",
        "the code requires BATCHLINE_WORK_BUCKET but infra does not set it",
    )


def test_renamed_env_var_in_code_is_reported(infra: c.InfraFacts, sources: dict[str, str]) -> None:
    config = sources["batchline.config"]
    assert '"BATCHLINE_EVENTS_TOPIC"' in config
    mutated = {
        **sources,
        "batchline.config": config.replace('"BATCHLINE_EVENTS_TOPIC"', '"BATCHLINE_EVENT_TOPIC"'),
    }
    assert_reported(
        problems_with_code(infra, mutated),
        "infra sets environment variable BATCHLINE_EVENTS_TOPIC but the code never reads it",
    )


def test_new_required_setting_in_code_is_reported(
    infra: c.InfraFacts, sources: dict[str, str]
) -> None:
    config = sources["batchline.config"]
    old = 'work_bucket=required("BATCHLINE_WORK_BUCKET"),'
    assert old in config
    mutated = {
        **sources,
        "batchline.config": config.replace(
            old, old + '\n            default_model=required("BATCHLINE_MODEL"),'
        ),
    }
    assert_reported(
        problems_with_code(infra, mutated),
        "the code requires BATCHLINE_MODEL but infra does not set it",
    )


def test_bucket_variable_naming_the_wrong_bucket_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "main.tf",
        "BATCHLINE_INPUT_BUCKET          = google_storage_bucket.input.name",
        "BATCHLINE_INPUT_BUCKET          = google_storage_bucket.output.name",
    )
    assert_reported(
        problems_with_infra(files, code), "BATCHLINE_INPUT_BUCKET (Settings.input_bucket)"
    )


def test_secret_for_a_key_the_code_does_not_read_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files, "main.tf", 'api_key_env = "OPENAI_API_KEY"', 'api_key_env = "OPENAI_KEY"'
    )
    assert_reported(problems_with_infra(files, code), "infra sets environment variable OPENAI_KEY")


def test_setting_infra_cannot_set_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "main.tf",
        "    BATCHLINE_ANTHROPIC_MAX_TOKENS   = var.settings.anthropic_max_tokens\n",
        "",
    )
    assert_reported(
        problems_with_infra(files, code),
        "the code reads BATCHLINE_ANTHROPIC_MAX_TOKENS but infra cannot set it",
    )


# -------------------------------------------------------------- providers and their keys


def test_provider_infra_cannot_enable_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "main.tf",
        '    anthropic = { api_key_env = "ANTHROPIC_API_KEY", service = null }\n',
        "",
    )
    assert_reported(
        problems_with_infra(files, code),
        "the code reads ANTHROPIC_API_KEY but infra cannot set it",
        "the code runs provider anthropic but infra cannot enable it",
        "var.enabled_providers accepts ['anthropic', 'openai', 'vertex'], but infra knows the providers ['openai', 'vertex']",
    )


def test_new_provider_in_code_is_reported(infra: c.InfraFacts, sources: dict[str, str]) -> None:
    module = "batchline.domain.providers.registry"
    old = "PROVIDERS: dict[str, Provider] = {\n"
    mutated = {
        **sources,
        module: sources[module].replace(old, old + '    "mistral": openai.DESCRIPTOR,\n'),
    }
    assert mutated != sources
    assert_reported(
        problems_with_code(infra, mutated), "the code runs provider mistral but infra cannot"
    )


def test_enabled_providers_not_passed_to_the_code_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    assert code.settings_env["enabled_providers"] == {"BATCHLINE_ENABLED_PROVIDERS"}
    files = changed(
        infra_files,
        "main.tf",
        'BATCHLINE_ENABLED_PROVIDERS = join(",", sort(tolist(var.enabled_providers)))',
        'BATCHLINE_ENABLED_PROVIDERS = "openai,anthropic,vertex"',
    )
    assert_reported(
        problems_with_infra(files, code),
        "BATCHLINE_ENABLED_PROVIDERS (Settings.enabled_providers) must always be set from var.enabled_providers",
    )


def test_enabled_providers_accepting_an_unknown_provider_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "variables.tf",
        'contains(["openai", "anthropic", "vertex"], p)',
        'contains(["openai", "anthropic", "vertex", "mistral"], p)',
    )
    assert_reported(problems_with_infra(files, code), "var.enabled_providers accepts")


def test_keys_not_mounted_where_the_code_calls_a_provider_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "main.tf",
        'publish = ["collect", "events", "notify"], provider_keys = true',
        'publish = ["collect", "events", "notify"], provider_keys = false',
    )
    assert_reported(
        problems_with_infra(files, code),
        "function collect: its code calls a provider but infra does not mount the API keys",
    )


# ------------------------------------------- Vertex AI: a Google API, called through IAM


def test_infra_setting_a_local_only_variable_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    """BATCHLINE_VERTEX_API_ENDPOINT points the code at the emulator: the code reads it, and
    infra must never set it."""
    files = changed(
        infra_files,
        "main.tf",
        "    BATCHLINE_VERTEX_PROJECT         = var.settings.vertex_project\n",
        "    BATCHLINE_VERTEX_PROJECT         = var.settings.vertex_project\n"
        "    BATCHLINE_VERTEX_API_ENDPOINT    = var.settings.openai_base_url\n",
    )
    assert_reported(
        problems_with_infra(files, code),
        "infra sets BATCHLINE_VERTEX_API_ENDPOINT, which only the local stack may set",
    )


def test_vertex_location_not_defaulting_to_the_region_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "main.tf",
        "coalesce(var.settings.vertex_location, var.region)",
        'coalesce(var.settings.vertex_location, "us-central1")',
    )
    assert_reported(
        problems_with_infra(files, code),
        "BATCHLINE_VERTEX_LOCATION (Settings.vertex_location) must always be set and default to the deployment's region",
    )


def test_key_secret_for_a_keyless_provider_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "main.tf",
        'vertex    = { api_key_env = null, service = "aiplatform.googleapis.com" }',
        'vertex    = { api_key_env = "VERTEX_API_KEY", service = "aiplatform.googleapis.com" }',
    )
    assert_reported(
        problems_with_infra(files, code),
        "provider vertex: its client reads no API key, but infra creates and mounts a VERTEX_API_KEY secret",
    )


def test_key_provider_without_its_key_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "main.tf",
        'anthropic = { api_key_env = "ANTHROPIC_API_KEY", service = null }',
        "anthropic = { api_key_env = null, service = null }",
    )
    assert_reported(
        problems_with_infra(files, code),
        "provider anthropic: its client reads its API key from ANTHROPIC_API_KEY, but infra mounts no key",
    )


def test_google_api_of_a_provider_not_enabled_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    wrong = changed(
        infra_files,
        "main.tf",
        'vertex    = { api_key_env = null, service = "aiplatform.googleapis.com" }',
        "vertex    = { api_key_env = null, service = null }",
    )
    assert_reported(
        problems_with_infra(wrong, code),
        "provider vertex: its adapter calls aiplatform.googleapis.com with the functions' own credentials, but local.providers.vertex.service is None",
    )
    missing = changed(
        infra_files,
        "vertex.tf",
        'resource "google_project_service" "vertex" {',
        'resource "google_project_service" "vertex_api" {',
    )
    assert_reported(
        problems_with_infra(missing, code),
        "infra does not enable aiplatform.googleapis.com for provider vertex",
    )
    always = changed(
        infra_files,
        "vertex.tf",
        "count              = local.vertex_enabled && var.enable_apis ? 1 : 0",
        "count              = var.enable_apis ? 1 : 0",
    )
    assert_reported(
        problems_with_infra(always, code),
        "google_project_service.vertex must exist only when var.enabled_providers holds vertex",
    )


def test_vertex_roles_follow_the_calls_the_code_makes(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    """collect only reads jobs (viewer); submit creates them (user): more or less is wrong."""
    wider = changed(
        infra_files,
        "main.tf",
        'provider_keys = true, vertex = "viewer"',
        'provider_keys = true, vertex = "user"',
    )
    assert_reported(
        problems_with_infra(wider, code),
        "function collect: its code calls ['get_batch_prediction_job'] on aiplatform.googleapis.com, which needs roles/aiplatform.viewer, but infra grants roles/aiplatform.user",
    )
    submit = 'submit  = { read = ["input", "work"], create = ["work", "output"], create_under = {}, names_only = [], publish = ["collect", "events", "notify"], provider_keys = true, vertex = "user" }'
    narrower = changed(infra_files, "main.tf", submit, submit.replace('"user"', "null"))
    assert_reported(
        problems_with_infra(narrower, code),
        "function submit: its code calls ['cancel_batch_prediction_job', 'create_batch_prediction_job', 'get_batch_prediction_job', 'list_batch_prediction_jobs'] on aiplatform.googleapis.com, which needs roles/aiplatform.user, but infra grants none",
    )
    unswitched = changed(
        infra_files,
        "vertex.tf",
        'vertex_users   = local.vertex_enabled ? toset([for f, a in local.access : f if a.vertex == "user"]) : toset([])',
        'vertex_users   = toset([for f, a in local.access : f if a.vertex == "user"])',
    )
    assert_reported(
        problems_with_infra(unswitched, code),
        "google_project_iam_member.vertex_user must exist only when var.enabled_providers holds vertex",
    )
    wrong_role = changed(
        infra_files,
        "vertex.tf",
        'role       = "roles/aiplatform.viewer"',
        'role       = "roles/aiplatform.admin"',
    )
    assert_reported(
        problems_with_infra(wrong_role, code),
        "google_project_iam_member.vertex_viewer must grant roles/aiplatform.viewer",
    )


def test_a_new_provider_call_in_a_function_changes_its_vertex_role(
    infra: c.InfraFacts, sources: dict[str, str]
) -> None:
    """collect cancelling a job would need roles/aiplatform.user, which it is not given."""
    module = "batchline.services.collect_chunk"
    old = "        batch = provider.get_batch(chunk.batch_id)\n"
    assert old in sources[module]
    indent = "        "
    mutated = {
        **sources,
        module: sources[module].replace(old, old + f"{indent}provider.cancel(chunk.batch_id)\n"),
    }
    assert_reported(
        problems_with_code(infra, mutated),
        "function collect: its code calls ['cancel_batch_prediction_job', 'get_batch_prediction_job'] on aiplatform.googleapis.com, which needs roles/aiplatform.user, but infra grants roles/aiplatform.viewer",
    )


def test_vertex_client_call_of_unknown_role_is_reported(
    infra: c.InfraFacts, sources: dict[str, str]
) -> None:
    module = "batchline.adapters.providers.vertex"
    old = "            job = self._client.get_batch_prediction_job("
    assert old in sources[module]
    mutated = {
        **sources,
        module: sources[module].replace(
            old, "            self._client.delete_batch_prediction_job(name=batch_id)\n" + old
        ),
    }
    assert_reported(
        problems_with_code(infra, mutated),
        "VertexProvider.get_batch calls delete_batch_prediction_job, whose role the check does not know",
    )


def test_blob_operation_of_a_provider_adapter_is_checked_for_its_callers(
    infra: c.InfraFacts, sources: dict[str, str]
) -> None:
    """Vertex's iter_results reads the work bucket for collect: what it does counts as
    collect's own (a delete there would need a role nobody has)."""
    module = "batchline.adapters.providers.vertex"
    old = "            with self._blobs.open_read(uri) as stream:\n"
    assert old in sources[module]
    mutated = {
        **sources,
        module: sources[module].replace(old, "            self._blobs.delete(uri)\n" + old),
    }
    assert_reported(
        problems_with_code(infra, mutated), "function collect: its code calls BlobStore.delete"
    )


def test_key_secrets_for_keyless_providers_are_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "main.tf",
        "if p.api_key_env != null && contains(var.enabled_providers, k)",
        "if contains(var.enabled_providers, k)",
    )
    assert_reported(
        problems_with_infra(files, code),
        "local.api_key_secrets must hold the providers in var.enabled_providers that have an api_key_env",
    )


def test_service_agent_access_to_the_work_bucket_is_checked(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    no_create = changed(
        infra_files,
        "vertex.tf",
        'role   = "roles/storage.objectCreator"',
        'role   = "roles/storage.objectViewer"',
    )
    assert_reported(
        problems_with_infra(no_create, code),
        "provider vertex: its jobs write its output to the work bucket as the aiplatform.googleapis.com service agent, but infra does not grant it roles/storage.objectCreator there",
    )
    other_prefix = changed(
        infra_files,
        "vertex.tf",
        'vertex_agent_objects = "projects/_/buckets/${google_storage_bucket.work.name}/objects/jobs/"',
        'vertex_agent_objects = "projects/_/buckets/${google_storage_bucket.work.name}/objects/inline/"',
    )
    assert_reported(
        problems_with_infra(other_prefix, code),
        "which does not cover jobs/, where the code stages chunk payloads",
    )
    always = changed(
        infra_files,
        "vertex.tf",
        'resource "google_storage_bucket_iam_member" "vertex_agent_creator" {\n  count  = local.vertex_enabled ? 1 : 0',
        'resource "google_storage_bucket_iam_member" "vertex_agent_creator" {\n  count  = 1',
    )
    assert_reported(
        problems_with_infra(always, code),
        "the vertex service agent's roles/storage.objectCreator must exist only when var.enabled_providers holds vertex",
    )
    no_agent = changed(
        infra_files,
        "vertex.tf",
        'resource "google_project_service_identity" "vertex" {',
        'resource "google_project_service_identity" "aiplatform" {',
    )
    assert_reported(
        problems_with_infra(no_agent, code),
        "provider vertex: its jobs read and write the work bucket as the aiplatform.googleapis.com service agent, which infra does not declare",
    )


# ------------------------------------------------------------------ triggers and access


def test_trigger_on_the_wrong_topic_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "main.tf",
        'trigger = "pubsub", topic = "collect"',
        'trigger = "pubsub", topic = "events"',
    )
    assert_reported(
        problems_with_infra(files, code), "topic 'events', which local.topic_ids does not map"
    )


def test_scheduler_on_the_wrong_topic_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "scheduler.tf",
        "topic_name = google_pubsub_topic.poll.id",
        "topic_name = google_pubsub_topic.collect.id",
    )
    assert_reported(
        problems_with_infra(files, code),
        "the scheduler job must publish to google_pubsub_topic.poll",
    )


def test_publisher_grants_follow_the_code(infra_files: dict[str, str], code: c.CodeFacts) -> None:
    narrower = changed(
        infra_files,
        "main.tf",
        'collect = { read = ["work", "output"], create = ["work", "output"], create_under = {}, names_only = [], publish = ["collect", "events", "notify"]',
        'collect = { read = ["work", "output"], create = ["work", "output"], create_under = {}, names_only = [], publish = ["collect", "notify"]',
    )
    assert_reported(
        problems_with_infra(narrower, code),
        "function collect: its code publishes to the events topic",
    )
    wider = changed(
        infra_files,
        "main.tf",
        'collect = { read = ["work", "output"], create = ["work", "output"], create_under = {}, names_only = [], publish = ["collect", "events", "notify"]',
        'collect = { read = ["work", "output"], create = ["work", "output"], create_under = {}, names_only = [], publish = ["collect", "events", "notify", "poll"]',
    )
    assert_reported(problems_with_infra(wider, code), "infra lets it publish to the poll topic")


def test_blob_operation_the_roles_do_not_allow_is_reported(
    infra: c.InfraFacts, sources: dict[str, str]
) -> None:
    module = "batchline.services.messages"
    old = "def request_collect(deps: Deps, job: Job) -> None:\n"
    assert old in sources[module]
    mutated = {
        **sources,
        module: sources[module].replace(old, old + "    deps.blobs.delete(job.summary_uri)\n"),
    }
    assert_reported(problems_with_code(infra, mutated), "calls BlobStore.delete")


def test_missing_retry_policy_is_reported(infra_files: dict[str, str], code: c.CodeFacts) -> None:
    files = changed(
        infra_files, "variables.tf", "      retry         = optional(bool, false)\n", ""
    )
    assert_reported(
        problems_with_infra(files, code), "var.functions.poll has no explicit retry setting"
    )


# --------------------------------------------------------------------------- Firestore


def test_query_needing_a_composite_index_is_reported_until_declared(
    infra_files: dict[str, str], sources: dict[str, str]
) -> None:
    module = "batchline.adapters.firestore"
    old = 'FieldFilter("state", "in", ACTIVE_STATES))'
    assert old in sources[module]
    mutated = {
        **sources,
        module: sources[module].replace(
            old, old + '.order_by("updated_at", direction="DESCENDING")'
        ),
    }
    code = c.code_facts(mutated)
    assert_reported(problems_with_infra(infra_files, code), "needs a composite index")
    declared = changed(
        infra_files,
        "firestore.tf",
        "firestore_indexes = {\n",
        'firestore_indexes = {\n    active = { collection = "jobs", scope = "COLLECTION", fields = [["state", "ASCENDING"], ["updated_at", "DESCENDING"]] }\n',
    )
    assert c.check(c.infra_facts_from(declared), code) == []


@pytest.mark.parametrize(
    ("index", "fields"),
    [
        ("jobs_by_state", '[["state", "ASCENDING"], ["created_at", "DESCENDING"]]'),
        ("jobs_by_label", '[["label_pairs", "CONTAINS"], ["created_at", "DESCENDING"]]'),
        (
            "jobs_by_state_and_label",
            '[["state", "ASCENDING"], ["label_pairs", "CONTAINS"], ["created_at", "DESCENDING"]]',
        ),
    ],
)
def test_each_job_listing_query_needs_its_composite_index(
    infra_files: dict[str, str], code: c.CodeFacts, index: str, fields: str
) -> None:
    """FirestoreJobStore.list_jobs: by state, by one label, by both, newest first."""
    line = f"      fields     = {fields}\n"
    wrong = changed(infra_files, "firestore.tf", line, line.replace("DESCENDING", "ASCENDING"))
    assert_reported(problems_with_infra(wrong, code), "needs a composite index")


CG_INDEX = '        ["COLLECTION_GROUP", "ASCENDING"],\n'


def test_collection_group_query_needs_its_declared_index(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    """batch_recorded_by's equality-only query over every job's chunks: Firestore keeps no
    collection-group single-field index by default, so without infra's it fails."""
    without = changed(infra_files, "firestore.tf", CG_INDEX, "")
    assert_reported(
        problems_with_infra(without, code),
        "needs a COLLECTION_GROUP ASCENDING or DESCENDING single-field index on chunks.batch_id, which infra's override",
    )
    text = infra_files["firestore.tf"]
    start = text.index("    chunks_batch_id = {")
    end = text.index("\n    }\n", start) + len("\n    }\n")
    undeclared = {**infra_files, "firestore.tf": text[:start] + text[end:]}
    assert_reported(
        problems_with_infra(undeclared, code),
        "the collection-group query on chunks",
        "which Firestore does not keep by default and infra does not declare",
    )


def test_new_collection_group_query_is_reported(
    infra: c.InfraFacts, sources: dict[str, str]
) -> None:
    module = "batchline.adapters.firestore"
    old = 'FieldFilter("batch_id", "==", batch_id)'
    assert old in sources[module]
    mutated = {
        **sources,
        module: sources[module].replace(old, 'FieldFilter("model", "==", batch_id)'),
    }
    assert_reported(
        problems_with_code(infra, mutated),
        "COLLECTION_GROUP ASCENDING or DESCENDING single-field index on chunks.model",
    )


def test_override_that_drops_an_automatic_index_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "firestore.tf",
        "  firestore_field_indexes = {\n",
        '  firestore_field_indexes = {\n    jobs_state = { collection = "jobs", field = "state", indexes = [["COLLECTION_GROUP", "ASCENDING"]] }\n',
    )
    assert_reported(
        problems_with_infra(files, code),
        "COLLECTION ASCENDING or DESCENDING single-field index on jobs.state, which infra's override of that field does not keep",
    )


def test_query_on_the_unindexed_ttl_field_is_reported(
    infra: c.InfraFacts, sources: dict[str, str]
) -> None:
    module = "batchline.adapters.firestore"
    old = 'FieldFilter("state", "in", ACTIVE_STATES)'
    assert old in sources[module]
    mutated = {
        **sources,
        module: sources[module].replace(old, 'FieldFilter("expire_at", "<", ACTIVE_STATES)'),
    }
    assert_reported(
        problems_with_code(infra, mutated),
        "single-field index on jobs.expire_at, which infra's override of that field does not keep",
    )


def test_ttl_field_also_in_the_index_overrides_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "firestore.tf",
        "  firestore_field_indexes = {\n",
        '  firestore_field_indexes = {\n    chunks_expire_at = { collection = "chunks", field = "expire_at", indexes = [["COLLECTION", "ASCENDING"]] }\n',
    )
    assert_reported(problems_with_infra(files, code), "chunks.expire_at is both a TTL field")


def test_unknown_field_override_is_reported(infra_files: dict[str, str], code: c.CodeFacts) -> None:
    extra = 'resource "google_firestore_field" "other" {\n  collection = "jobs"\n  field = "state"\n  index_config {}\n}\n'
    files = {**infra_files, "extra.tf": extra}
    assert_reported(problems_with_infra(files, code), "google_firestore_field.other is neither")


# ----------------------------------------------------------------------------- retention


def test_ttl_on_a_field_the_code_does_not_stamp_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files, "firestore.tf", 'field       = "expire_at"', 'field       = "expires_at"'
    )
    assert_reported(
        problems_with_infra(files, code),
        "TTL policy on jobs is on expires_at, but the code stamps ['expire_at']",
        "TTL policy on chunks is on expires_at",
    )


def test_renamed_expiry_field_in_code_is_reported(
    infra: c.InfraFacts, sources: dict[str, str]
) -> None:
    mutated = {name: source.replace("expire_at", "delete_at") for name, source in sources.items()}
    assert mutated != sources
    assert_reported(
        problems_with_code(infra, mutated),
        "TTL policy on jobs is on expire_at, but the code stamps ['delete_at']",
    )


def test_collection_the_code_stamps_without_a_policy_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "firestore.tf",
        '? [] : ["jobs", "chunks", "idempotency_keys"]',
        '? [] : ["jobs", "idempotency_keys"]',
    )
    assert_reported(
        problems_with_infra(files, code),
        "the code stamps ['expire_at'] on chunks documents but infra puts no TTL policy on chunks",
    )


def test_retention_variable_and_ttl_policies_must_go_together(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    env_line = "    BATCHLINE_RETENTION_DAYS         = var.firestore.retention_days\n"
    unset = changed(infra_files, "main.tf", env_line, "")
    assert_reported(
        problems_with_infra(unset, code),
        "infra never sets BATCHLINE_RETENTION_DAYS, so the code stamps no expire_at",
    )
    other = changed(
        infra_files,
        "firestore.tf",
        "collections = var.firestore.retention_days == null",
        "collections = var.firestore.location == null",
    )
    assert_reported(
        problems_with_infra(other, code),
        "BATCHLINE_RETENTION_DAYS is set from var.firestore.retention_days but the TTL policies exist when var.firestore.location is not null",
    )
    always = changed(
        infra_files,
        "firestore.tf",
        'collections = var.firestore.retention_days == null ? [] : ["jobs", "chunks", "idempotency_keys"]',
        'collections = ["jobs", "chunks", "idempotency_keys"]',
    )
    assert_reported(problems_with_infra(always, code), "local.ttl.collections must be")


# ---------------------------------------------------------------------- buckets and IAM


def test_work_prefix_without_lifecycle_is_reported(
    infra: c.InfraFacts, sources: dict[str, str]
) -> None:
    module = "batchline.services.api.submit"
    old = 'f"gs://{deps.settings.work_bucket}/inline/{job_id}.jsonl"'
    assert old in sources[module]
    mutated = {
        **sources,
        module: sources[module].replace(
            old, 'f"gs://{deps.settings.work_bucket}/uploads/{job_id}.jsonl"'
        ),
    }
    assert_reported(problems_with_code(infra, mutated), "writes under uploads/ in the work bucket")


@pytest.mark.parametrize(
    ("resource", "fragment"),
    [
        (
            'resource "google_project_iam_member" "x" {\n  project = "p"\n  role = "roles/editor"\n  member = "user:a@b.c"\n}\n',
            "primitive role roles/editor",
        ),
        (
            'resource "google_cloud_run_v2_service_iam_member" "x" {\n  name = "s"\n  role = "roles/run.invoker"\n  member = "allUsers"\n}\n',
            "to allUsers",
        ),
        (
            'resource "google_storage_bucket_iam_binding" "x" {\n  bucket = "b"\n  role = "roles/storage.objectViewer"\n  members = ["user:a@b.c", "allAuthenticatedUsers"]\n}\n',
            "to allAuthenticatedUsers",
        ),
        (
            'resource "google_project_iam_member" "x" {\n  project = "p"\n  role = "roles/run.invoker"\n  member = "user:a@b.c"\n}\n',
            "on the whole project instead of one service",
        ),
        (
            'resource "google_project_iam_member" "x" {\n  project = "p"\n  role = local.role\n  member = "user:a@b.c"\n}\n',
            "role must be a literal",
        ),
    ],
)
def test_unsafe_grants_are_reported(
    infra_files: dict[str, str], code: c.CodeFacts, resource: str, fragment: str
) -> None:
    files = {**infra_files, "extra.tf": resource}
    assert_reported(problems_with_infra(files, code), fragment)


def test_invoker_variable_that_accepts_everyone_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "variables.tf",
        '"^(user|serviceAccount|group|domain|principal|principalSet):.+$"',
        '"^.+$"',
    )
    assert_reported(problems_with_infra(files, code), "var.api_invokers accepts allUsers")


# ------------------------------------------------------------------------------ timeouts


def test_event_timeout_over_the_limit_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "variables.tf",
        "      timeout       = optional(number, 540)\n      max_instances = optional(number, 20)\n"
        "      min_instances = optional(number, 0)\n      concurrency   = optional(number, 1)\n"
        "      retry         = optional(bool, false)",
        "      timeout       = optional(number, 600)\n      max_instances = optional(number, 20)\n"
        "      min_instances = optional(number, 0)\n      concurrency   = optional(number, 1)\n"
        "      retry         = optional(bool, false)",
    )
    assert_reported(
        problems_with_infra(files, code),
        "function poll: default timeout 600 s is over the 540 s limit",
    )


def test_work_budget_that_does_not_fit_the_timeout_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "variables.tf",
        "work_budget_seconds    = optional(number, 420)",
        "work_budget_seconds    = optional(number, 500)",
    )
    assert_reported(problems_with_infra(files, code), "work budget 500 s does not leave 60 s")


def test_checkov_skips_are_inline_and_give_a_reason() -> None:
    skips = []
    for path in sorted(c.INFRA.glob("*.tf")):
        for match in re.finditer(r"checkov:skip=([A-Z0-9_]+)(:[^\n]*)?", path.read_text()):
            reason = (match.group(2) or "").lstrip(":").strip()
            assert len(reason) >= 40, f"{path.name}: {match.group(1)} is skipped without a reason"
            skips.append(match.group(1))
    # The README's deploy section counts them; change both together.
    assert sorted(skips) == ["CKV_GCP_62", "CKV_GCP_62", "CKV_GCP_62", "CKV_GCP_78"]


def test_api_plans_nothing_and_reads_no_working_data(code: c.CodeFacts) -> None:
    """The api function claims jobs (poll plans them): no work budget, no provider. It
    reads blobs (a caller's input object, a job's summary and results) and creates its
    staged inline requests; its grants say where (input and output read, work create
    under inline/)."""
    use = code.uses["api"]
    assert "work_budget_seconds" not in use.settings
    assert not use.uses_providers
    assert use.blob_operations <= {"create", "describe", "open_read", "read_bytes"}, (
        use.blob_operations
    )
    assert {"open_read", "read_bytes"} <= use.blob_operations
    assert use.published == {"poll_topic"}


def test_api_granted_read_on_the_work_bucket_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    """Reading output is what the API is for (a job's results); reading work, where every
    job's working data lies, stays forbidden to a function reached over HTTP."""
    api_line = 'api     = { read = ["input", "output"], create = ["work"]'
    assert api_line in infra_files["main.tf"]
    assert not [p for p in problems_with_infra(infra_files, code) if "function api" in p]
    reads_work = changed(
        infra_files,
        "main.tf",
        api_line,
        'api     = { read = ["input", "output", "work"], create = ["work"]',
    )
    assert_reported(
        problems_with_infra(reads_work, code),
        "function api: reached over HTTP, it must not read the work bucket",
    )
    no_output = changed(
        infra_files, "main.tf", api_line, 'api     = { read = ["input"], create = ["work"]'
    )
    assert_reported(
        problems_with_infra(no_output, code),
        "function api: its code uses the output bucket but infra grants it nothing there",
    )
    anywhere = changed(
        infra_files, "main.tf", 'create_under = { work = "inline/" }', "create_under = {}"
    )
    assert_reported(
        problems_with_infra(anywhere, code),
        "its create access on the work bucket must be limited to a prefix",
    )


# ------------------------------------------------------------------- webhook secrets


def test_a_webhook_secret_mounted_where_the_code_does_not_read_it_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "main.tf",
        'env = "BATCHLINE_WEBHOOK_SECRET", functions = ["notify"]',
        'env = "BATCHLINE_WEBHOOK_SECRET", functions = ["notify", "poll"]',
    )
    assert_reported(
        problems_with_infra(files, code),
        "function poll: local.webhooks.notify mounts BATCHLINE_WEBHOOK_SECRET there",
    )


def test_a_webhook_secret_not_mounted_where_the_code_reads_it_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "main.tf",
        'env = "OPENAI_WEBHOOK_SECRET", functions = ["api"]',
        'env = "OPENAI_WEBHOOK_SECRET", functions = []',
    )
    assert_reported(
        problems_with_infra(files, code),
        "function api: its code reads Settings.openai_webhook_secret (OPENAI_WEBHOOK_SECRET)",
    )


def test_a_secret_setting_infra_does_not_mount_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "main.tf",
        '    openai = { env = "OPENAI_WEBHOOK_SECRET", functions = ["api"], enabled = var.webhooks.openai_inbound }\n',
        "",
    )
    assert_reported(
        problems_with_infra(files, code),
        "Settings.openai_webhook_secret is a secret (OPENAI_WEBHOOK_SECRET)",
        "the code reads OPENAI_WEBHOOK_SECRET but infra cannot set it",
    )


def test_webhook_secrets_mounted_or_granted_to_every_function_are_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(infra_files, "functions.tf", "if contains(v.functions, each.key)", "")
    assert_reported(
        problems_with_infra(files, code), "each function must mount the webhook secrets"
    )
    files = changed(
        infra_files,
        "secrets.tf",
        'for f in v.functions : "${f}/${k}"',
        'for f in keys(local.functions) : "${f}/${k}"',
    )
    assert_reported(
        problems_with_infra(files, code), "webhook_accessor must grant each webhook secret"
    )


def test_infra_setting_the_insecure_local_webhook_switch_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "main.tf",
        "    BATCHLINE_NOTIFY_TOPIC          = google_pubsub_topic.notify.name\n",
        "    BATCHLINE_NOTIFY_TOPIC          = google_pubsub_topic.notify.name\n"
        '    BATCHLINE_WEBHOOK_ALLOW_INSECURE_LOCAL = "1"\n',
    )
    assert_reported(
        problems_with_infra(files, code),
        "infra sets BATCHLINE_WEBHOOK_ALLOW_INSECURE_LOCAL, which only the local stack may set",
    )


def test_a_function_publishing_to_notify_without_the_grant_is_reported(
    infra_files: dict[str, str], code: c.CodeFacts
) -> None:
    files = changed(
        infra_files,
        "main.tf",
        'publish = ["collect", "events", "notify"], provider_keys = true, vertex = "viewer"',
        'publish = ["collect", "events"], provider_keys = true, vertex = "viewer"',
    )
    assert_reported(
        problems_with_infra(files, code),
        "function collect: its code publishes to the notify topic but infra does not let it",
    )
