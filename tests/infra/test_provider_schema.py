"""infra/ against the Google provider's own schema (provider_schema.py): the repository has
no finding, and a copy of infra/ with one thing changed has the one it should.

The schema comes from npm (pinned, cached under .cache/provider-schema/): without npm or
the registry the tests skip, except under CI (`CI=true`), where they fail.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import unavailable

from . import consistency as c
from . import provider_schema as ps


@pytest.fixture(scope="module")
def schemas() -> dict[str, ps.Schema]:
    try:
        return ps.load_schemas()
    except ps.SchemaUnavailable as exc:
        unavailable(f"the provider schema is unavailable: {exc}")


@pytest.fixture(scope="module")
def infra_files() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(c.INFRA.glob("*.tf"))}


def test_infra_matches_the_provider_schema(schemas: dict[str, ps.Schema]) -> None:
    findings = ps.check_directory(c.INFRA, schemas)
    assert findings == [], "\n".join(map(str, findings))


def test_every_google_block_in_infra_is_checked(infra_files: dict[str, str]) -> None:
    # If provider resolution silently dropped blocks, the check above would pass vacuously.
    expected = set()
    for text in infra_files.values():
        parsed = c.parse_hcl(text)
        expected |= {f"{k}.{n}" for k, n, _ in c.labelled_blocks(parsed, "resource")}
        expected |= {f"data.{k}.{n}" for k, n, _ in c.labelled_blocks(parsed, "data")}
    expected = {a for a in expected if a.removeprefix("data.").startswith("google_")}
    checked = {b.address: b.source for b in ps.provider_blocks(infra_files)}
    assert expected and expected == set(checked) - {"provider.google", "provider.google-beta"}
    assert checked["google_project_service_identity.vertex"] == "hashicorp/google-beta"
    assert checked["google_storage_bucket.work"] == "hashicorp/google"
    assert checked["provider.google-beta"] == "hashicorp/google-beta"


def test_the_schema_is_what_the_check_relies_on(schemas: dict[str, ps.Schema]) -> None:
    google, beta = schemas["hashicorp/google"], schemas["hashicorp/google-beta"]
    assert (google.name, google.version, beta.name) == ("google", "6.50.0", "google-beta")
    bucket = google.block("resource", "google_storage_bucket")
    assert bucket is not None
    assert bucket.arguments["name"] and bucket.arguments["location"]  # required
    assert not bucket.arguments["uniform_bucket_level_access"]
    assert "self_link" not in bucket.arguments  # computed only: not settable
    rule = bucket.blocks["lifecycle_rule"]
    assert not rule.required and not rule.single
    assert rule.block.blocks["action"].required and rule.block.blocks["action"].single
    assert "timeouts" in bucket.blocks  # a block of the resource's schema, checked as such
    # The beta-only resource infra uses, and a data source.
    assert not google.has("resource", "google_project_service_identity")
    assert beta.has("resource", "google_project_service_identity")
    assert google.has("data", "google_project") and not google.has("resource", "google_project_x")
    assert "default_labels" in google.reduced["provider"]["arguments"]


# (file, text, its replacement, finding: file, address, argument, message start)
CHANGES = {
    "misspelt argument": (
        "storage.tf",
        "uniform_bucket_level_access = true",
        "uniform_bucket_level_acess = true",
        ("storage.tf", "google_storage_bucket.input", "uniform_bucket_level_acess", "no such"),
    ),
    "misspelt argument in a nested block": (
        "functions.tf",
        "entry_point       = each.value.entry_point",
        "entry_piont       = each.value.entry_point",
        (
            "functions.tf",
            "google_cloudfunctions2_function.function",
            "build_config.entry_piont",
            "no such",
        ),
    ),
    "beta-only resource without provider = google-beta": (
        "vertex.tf",
        "  provider   = google-beta\n",
        "",
        (
            "vertex.tf",
            "google_project_service_identity.vertex",
            "",
            "google 6.50.0 has no resource type google_project_service_identity (google-beta",
        ),
    ),
    "missing required argument": (
        "vertex.tf",
        '  role       = "roles/aiplatform.user"\n',
        "",
        ("vertex.tf", "google_project_iam_member.vertex_user", "role", "required argument"),
    ),
    "missing required block": (
        "storage.tf",
        '    action {\n      type = "AbortIncompleteMultipartUpload"\n    }\n',
        "",
        ("storage.tf", "google_storage_bucket.input", "lifecycle_rule.action", "required block"),
    ),
    "missing required argument in a dynamic block": (
        "functions.tf",
        '          attribute = "bucket"\n',
        "",
        (
            "functions.tf",
            "google_cloudfunctions2_function.function",
            "event_trigger.event_filters.attribute",
            "required argument",
        ),
    ),
    "unknown nested block inside a dynamic block": (
        "functions.tf",
        'dynamic "event_filters"',
        'dynamic "event_filter"',
        (
            "functions.tf",
            "google_cloudfunctions2_function.function",
            "event_trigger.event_filter",
            "no such block",
        ),
    ),
    "misspelt argument in a dynamic block's content": (
        "firestore.tf",
        "query_scope  = indexes.value[0]",
        "query_scop   = indexes.value[0]",
        (
            "firestore.tf",
            "google_firestore_field.index",
            "index_config.indexes.query_scop",
            "no such",
        ),
    ),
    "block written as an argument": (
        "storage.tf",
        "  versioning {\n",
        "  versioning = {\n",
        ("storage.tf", "google_storage_bucket.input", "versioning", "is a block"),
    ),
    "max-one block written twice": (
        "firestore.tf",
        "  ttl_config {}\n",
        "  ttl_config {}\n  ttl_config {}\n",
        ("firestore.tf", "google_firestore_field.ttl", "ttl_config", "at most one"),
    ),
    "unknown resource type": (
        "pubsub.tf",
        'resource "google_pubsub_topic" "poll"',
        'resource "google_pubsub_topics" "poll"',
        ("pubsub.tf", "google_pubsub_topics.poll", "", "google 6.50.0 has no resource type"),
    ),
    "misspelt data source argument": (
        "main.tf",
        "  project_id = var.project_id\n}",
        "  project    = var.project_id\n}",
        ("main.tf", "data.google_project.this", "project", "no such"),
    ),
    "misspelt provider argument": (
        "versions.tf",
        "  default_labels = local.labels",
        "  default_label = local.labels",
        ("versions.tf", "provider.google", "default_label", "no such"),
    ),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=list(CHANGES))
def test_a_changed_copy_is_reported(
    change: tuple[str, str, str, tuple[str, str, str, str]],
    schemas: dict[str, ps.Schema],
    tmp_path: Path,
) -> None:
    name, old, new, (file, address, argument, message) = change
    for tf in c.INFRA.glob("*.tf"):
        shutil.copy(tf, tmp_path / tf.name)
    text = (tmp_path / name).read_text()
    assert old in text, f"{old!r} not in {name}: update the test with infra"
    (tmp_path / name).write_text(text.replace(old, new, 1))
    findings = ps.check_directory(tmp_path, schemas)
    assert [(f.file, f.address, f.argument) for f in findings] == [(file, address, argument)], (
        "\n".join(map(str, findings))
    )
    assert findings[0].message.startswith(message), str(findings[0])
    assert f"infra/{file}: {address}:" in str(findings[0])
