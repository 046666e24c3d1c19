"""infra/variables.tf evaluated by Terraform itself.

Variables, their optional() defaults and their validation blocks are Terraform core, with
no provider involved, so unlike the rest of infra/ they can be evaluated offline: each test
copies variables.tf next to an output that echoes the variables, runs `terraform apply`
(there are no resources) and reads the outputs, or expects the validation's message.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from . import consistency as c

PROBE = """
output "values" {
  value = {
    functions     = var.functions
    settings      = var.settings
    buckets       = var.buckets
    pubsub        = var.pubsub
    firestore     = var.firestore
    poll_schedule = var.poll_schedule
    providers     = var.enabled_providers
  }
}
"""


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def terraform() -> str:
    path = shutil.which("terraform")
    if path is None:
        if _in_ci():
            pytest.fail("terraform is not installed", pytrace=False)
        pytest.skip("terraform is not installed")
    return path


@pytest.fixture(scope="module")
def probe(terraform: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with infra/variables.tf and the probe output, initialised (no providers)."""
    directory = tmp_path_factory.mktemp("variables")
    shutil.copy(c.INFRA / "variables.tf", directory / "variables.tf")
    (directory / "probe.tf").write_text(PROBE)
    zip_path = directory / "bundle.zip"
    zip_path.write_bytes(b"not really a zip")
    digest = hashlib.md5(zip_path.read_bytes()).hexdigest()
    zip_path.rename(directory / f"batchline-functions-{digest}.zip")
    subprocess.run(
        [terraform, "init", "-input=false", "-no-color"],
        cwd=directory,
        env=_env(directory),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return directory


def _env(directory: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(directory),
        "TF_IN_AUTOMATION": "1",
        "TF_CLI_CONFIG_FILE": os.devnull,
        "CHECKPOINT_DISABLE": "1",
    }


def bundle(probe: Path) -> str:
    return str(next(probe.glob("batchline-functions-*.zip")))


def evaluate(terraform: str, probe: Path, **values: Any) -> subprocess.CompletedProcess[str]:
    """`terraform apply` with these variables (JSON-encoded), in a fresh state."""
    values = {"project_id": "my-project", "bundle_path": bundle(probe), **values}
    (probe / "case.tfvars.json").write_text(json.dumps(values))
    (probe / "terraform.tfstate").unlink(missing_ok=True)
    return subprocess.run(
        [
            terraform,
            "apply",
            "-auto-approve",
            "-input=false",
            "-no-color",
            "-var-file=case.tfvars.json",
        ],
        cwd=probe,
        env=_env(probe),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def outputs(terraform: str, probe: Path, **values: Any) -> dict[str, Any]:
    result = evaluate(terraform, probe, **values)
    assert result.returncode == 0, result.stderr
    shown = subprocess.run(
        [terraform, "output", "-json", "values"],
        cwd=probe,
        env=_env(probe),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return dict(json.loads(shown.stdout))


def test_defaults_are_what_the_consistency_check_reads(terraform: str, probe: Path) -> None:
    """Terraform's own view of the optional() defaults equals the parser's in consistency.py,
    so the timeout and budget checks there read the numbers Terraform will use."""
    values = outputs(terraform, probe)
    infra = c.infra_facts()
    assert values["functions"] == c.variable_defaults(infra, "functions")
    assert values["settings"] == c.variable_defaults(infra, "settings")
    assert values["functions"]["poll"]["retry"] is False
    assert values["functions"]["submit"]["timeout"] <= 540
    # Only OpenAI's secret unless asked for more; finished jobs kept unless asked otherwise.
    assert values["providers"] == ["openai"]
    assert values["firestore"]["retention_days"] is None


def test_a_partial_override_keeps_the_other_defaults(terraform: str, probe: Path) -> None:
    values = outputs(terraform, probe, functions={"submit": {"memory": "2Gi"}})
    assert values["functions"]["submit"]["memory"] == "2Gi"
    assert values["functions"]["submit"]["timeout"] == 540
    assert values["functions"]["collect"]["retry"] is True


def test_anthropic_settings_and_retention_are_accepted(terraform: str, probe: Path) -> None:
    values = outputs(
        terraform,
        probe,
        enabled_providers=["openai", "anthropic"],
        settings={"default_model": "anthropic/claude-sonnet-4-5", "anthropic_max_tokens": 4096},
        firestore={"retention_days": 30},
    )
    assert sorted(values["providers"]) == ["anthropic", "openai"]
    assert values["settings"]["anthropic_max_tokens"] == 4096
    assert values["firestore"]["retention_days"] == 30


def test_vertex_and_its_settings_are_accepted(terraform: str, probe: Path) -> None:
    values = outputs(
        terraform,
        probe,
        enabled_providers=["vertex"],
        settings={
            "default_model": "vertex/gemini-2.5-flash",
            "vertex_location": "europe-west4",
            "vertex_project": "other-project",
            "vertex_max_requests": 1000,
        },
    )
    assert values["providers"] == ["vertex"]
    assert values["settings"]["vertex_location"] == "europe-west4"
    assert values["settings"]["vertex_max_bytes"] is None  # the code's default


def test_a_directory_bundle_is_accepted(terraform: str, probe: Path) -> None:
    source = probe / "source"
    source.mkdir(exist_ok=True)
    (source / "main.py").write_text("")
    (source / "requirements.txt").write_text("")
    assert evaluate(terraform, probe, bundle_path=str(source)).returncode == 0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"project_id": "My Project"}, "project_id must be a project id"),
        (
            {"bundle_path": "/nonexistent/batchline-functions-0123.zip"},
            "bundle_path must be a zip named by its own MD5",
        ),
        (
            {"functions": {"poll": {"timeout": 600}}},
            "60-540 s for submit, poll, collect and notify",
        ),
        ({"functions": {"api": {"cpu": "0.5", "concurrency": 8}}}, "cpu >= 1 when concurrency > 1"),
        ({"functions": {"runtime": "python39"}}, "functions.runtime must be"),
        ({"settings": {"work_budget_seconds": 500}}, "must leave at least 60 s"),
        ({"functions": {"api": {"timeout": 300}}}, "must leave at least 60 s"),
        (
            {"settings": {"max_hold_seconds": 500}},
            "max_hold_seconds must be longer than every function's timeout",
        ),
        (
            {"settings": {"lease_seconds": 20, "heartbeat_seconds": 10}},
            "three heartbeats",
        ),
        ({"settings": {"default_model": "gpt-4o"}}, "provider/model"),
        (
            {"settings": {"default_model": "anthropic/claude-sonnet-4-5"}},
            "names a provider that is not in enabled_providers",
        ),
        ({"settings": {"anthropic_max_tokens": 0}}, "whole numbers of at least 1"),
        ({"settings": {"openai_max_bytes": 1.5}}, "whole numbers of at least 1"),
        ({"enabled_providers": []}, "enabled_providers must list at least one of"),
        ({"enabled_providers": ["openai", "mistral"]}, "enabled_providers must list at least one"),
        (
            {"settings": {"vertex_location": "Mars"}},
            "settings.vertex_location must be a Google Cloud region",
        ),
        (
            {"settings": {"vertex_project": "My Project"}},
            "settings.vertex_project must be a project id",
        ),
        ({"settings": {"vertex_max_requests": 0}}, "whole numbers of at least 1"),
        ({"firestore": {"retention_days": 0}}, "firestore.retention_days must be at least 1"),
        ({"api_invokers": ["allUsers"]}, "allUsers and allAuthenticatedUsers are refused"),
        (
            {"api_invokers": ["allAuthenticatedUsers"]},
            "allUsers and allAuthenticatedUsers are refused",
        ),
        ({"pubsub": {"message_retention": "10s"}}, "pubsub.message_retention must be between"),
        ({"pubsub": {"dead_letter_attempts": 2}}, "between 5 and 100"),
        ({"poll_schedule": {"cron": "every minute"}}, "five-field cron"),
        ({"buckets": {"work_retention_days": 1}}, "work_retention_days at least 3"),
        ({"firestore": {"deletion_policy": "KEEP"}}, "ABANDON or DELETE"),
        ({"kms_key": "my-key"}, "kms_key must be a full crypto key id"),
        ({"prefix": "Batch_Line"}, "prefix must be 3-15 lowercase"),
    ],
)
def test_validation_refuses(
    terraform: str, probe: Path, values: dict[str, Any], message: str
) -> None:
    result = evaluate(terraform, probe, **values)
    assert result.returncode != 0
    assert message in " ".join(result.stderr.split()), result.stderr
