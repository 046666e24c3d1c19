"""`make deploy` and `make destroy` (infra/deploy.py) against stand-ins for terraform and
gcloud that record how they were called: the order of the steps, the secret's value going
only through stdin, and stopping with instructions when a key is missing."""

from __future__ import annotations

import base64
import copy
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from . import consistency as c

DEPLOY = c.INFRA / "deploy.py"

# One stand-in for both tools: logs argv and stdin, answers `show -json` and
# `secrets versions list` from files the test writes.
STUB = """#!{python}
import json, os, sys
tool = os.path.basename(sys.argv[0])
args = sys.argv[1:]
stdin = sys.stdin.read() if "--data-file=-" in args else None
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps({{"tool": tool, "args": args, "stdin": stdin}}) + "\\n")
if tool == "terraform" and args[1:3] == ["show", "-json"]:
    print(open(os.environ["STUB_STATE"]).read())
if tool == "gcloud" and args[:3] == ["secrets", "versions", "list"]:
    print(open(os.environ["STUB_VERSIONS"]).read())
"""

STATE = {
    "values": {
        "root_module": {
            "resources": [
                {
                    "address": 'google_secret_manager_secret.api_key["openai"]',
                    "values": {
                        "secret_id": "batchline-openai-api-key",
                        "project": "my-project",
                        "labels": {"batchline-env": "openai_api_key"},
                    },
                }
            ]
        }
    }
}


ANTHROPIC_SECRET = {
    "address": 'google_secret_manager_secret.api_key["anthropic"]',
    "values": {
        "secret_id": "batchline-anthropic-api-key",
        "project": "my-project",
        "labels": {"batchline-env": "anthropic_api_key"},
    },
}


def with_anthropic() -> dict[str, Any]:
    """The state after the secrets' apply with enabled_providers = ["openai", "anthropic"]."""
    state = copy.deepcopy(STATE)
    state["values"]["root_module"]["resources"].append(ANTHROPIC_SECRET)
    return state


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, Any]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("terraform", "gcloud"):
        path = bin_dir / tool
        path.write_text(STUB.format(python=sys.executable))
        path.chmod(0o755)
    (tmp_path / "state.json").write_text(json.dumps(STATE))
    (tmp_path / "versions.txt").write_text("")
    tfvars = tmp_path / "terraform.tfvars"
    tfvars.write_text('project_id = "my-project"\n')
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "STUB_LOG": str(tmp_path / "log.jsonl"),
        "STUB_STATE": str(tmp_path / "state.json"),
        "STUB_VERSIONS": str(tmp_path / "versions.txt"),
        "TFVARS": str(tfvars),
        "AUTO_APPROVE": "1",
    }
    return {"env": env, "dir": tmp_path, "tfvars": tfvars}


def deploy(
    stubs: dict[str, Any], action: str, **extra: str
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    result = subprocess.run(
        [sys.executable, str(DEPLOY), action],
        env={**stubs["env"], **extra},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    log = stubs["dir"] / "log.jsonl"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def steps(calls: list[dict[str, Any]]) -> list[str]:
    """Each call as its tool and up to three subcommand words ("gcloud secrets versions add")."""
    named = []
    for call in calls:
        args = [a for a in call["args"] if not a.startswith("-chdir=")]
        words = list(itertools.takewhile(lambda a: not a.startswith("-"), args))[:3]
        named.append(" ".join([call["tool"], *words]))
    return named


def test_deploy_adds_a_missing_key_through_stdin_then_applies(stubs: dict[str, Any]) -> None:
    result, calls = deploy(stubs, "apply", OPENAI_API_KEY="sk-test-123")
    assert result.returncode == 0, result.stderr
    assert steps(calls) == [
        "terraform init",
        "terraform apply",
        "terraform show",
        "gcloud secrets versions list",
        "gcloud secrets versions add",
        "terraform apply",
        "terraform output",
    ]
    first_apply, add, last_apply = calls[1], calls[4], calls[5]
    assert "-target=google_secret_manager_secret.api_key" in first_apply["args"]
    assert not any(a.startswith("-target") for a in last_apply["args"])
    assert add["stdin"] == "sk-test-123"
    assert add["args"][:4] == ["secrets", "versions", "add", "batchline-openai-api-key"]
    assert "--project=my-project" in add["args"]
    # The key is never on a command line, and Terraform gets the MD5-named zip.
    assert not any("sk-test-123" in " ".join(call["args"]) for call in calls)
    bundle = next(a for a in last_apply["args"] if a.startswith("-var=bundle_path="))
    assert Path(bundle.split("=", 2)[2]).name.startswith("batchline-functions-")
    assert f"-var-file={stubs['tfvars']}" in last_apply["args"]
    assert "-auto-approve" in last_apply["args"]


def test_deploy_leaves_an_existing_key_alone(stubs: dict[str, Any]) -> None:
    (stubs["dir"] / "versions.txt").write_text(
        "projects/1/secrets/batchline-openai-api-key/versions/1\n"
    )
    result, calls = deploy(stubs, "apply")
    assert result.returncode == 0, result.stderr
    assert "gcloud secrets versions add" not in steps(calls)
    assert steps(calls)[-2:] == ["terraform apply", "terraform output"]


def test_deploy_stops_and_explains_when_a_key_is_missing(stubs: dict[str, Any]) -> None:
    result, calls = deploy(stubs, "apply")
    assert result.returncode == 1
    assert "gcloud secrets versions add batchline-openai-api-key" in result.stderr
    assert "OPENAI_API_KEY" in result.stderr
    assert steps(calls).count("terraform apply") == 1  # only the secrets were applied


def test_deploy_fills_every_enabled_providers_secret(stubs: dict[str, Any]) -> None:
    (stubs["dir"] / "state.json").write_text(json.dumps(with_anthropic()))
    result, calls = deploy(stubs, "apply", OPENAI_API_KEY="sk-o", ANTHROPIC_API_KEY="sk-a")
    assert result.returncode == 0, result.stderr
    added = {
        c["args"][3]: c["stdin"] for c in calls if steps([c])[0] == "gcloud secrets versions add"
    }
    assert added == {"batchline-openai-api-key": "sk-o", "batchline-anthropic-api-key": "sk-a"}
    assert steps(calls)[-2:] == ["terraform apply", "terraform output"]


def test_deploy_stops_when_an_enabled_provider_has_no_key(stubs: dict[str, Any]) -> None:
    """Anthropic enabled but ANTHROPIC_API_KEY not set: the OpenAI key is still added, then
    the deploy stops before the functions would be deployed with an empty secret."""
    (stubs["dir"] / "state.json").write_text(json.dumps(with_anthropic()))
    result, calls = deploy(stubs, "apply", OPENAI_API_KEY="sk-o")
    assert result.returncode == 1
    assert "gcloud secrets versions add batchline-anthropic-api-key" in result.stderr
    assert "enabled_providers" in result.stderr
    assert steps(calls).count("gcloud secrets versions add") == 1
    assert steps(calls).count("terraform apply") == 1


def test_a_key_for_a_provider_not_enabled_is_not_deployed(stubs: dict[str, Any]) -> None:
    """Only OpenAI enabled (the default): an ANTHROPIC_API_KEY in the environment is left
    alone, and the deploy goes on, saying so."""
    result, calls = deploy(stubs, "apply", OPENAI_API_KEY="sk-o", ANTHROPIC_API_KEY="sk-a")
    assert result.returncode == 0, result.stderr
    assert "ANTHROPIC_API_KEY is set, but anthropic is not in enabled_providers" in result.stderr
    assert not any(c["stdin"] == "sk-a" or "sk-a" in " ".join(c["args"]) for c in calls)
    assert steps(calls)[-2:] == ["terraform apply", "terraform output"]


def test_deploy_knows_the_key_variables_infra_mounts() -> None:
    spec = importlib.util.spec_from_file_location("deploy", DEPLOY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    providers = c.infra_facts().locals["providers"]
    infra_keys = {name: p["api_key_env"] for name, p in providers.items() if p["api_key_env"]}
    assert infra_keys == module.API_KEY_ENV
    # A keyless provider (Vertex AI, through IAM) has no secret for deploy to fill.
    assert "vertex" in providers and "vertex" not in module.API_KEY_ENV


def test_deploy_needs_tfvars(stubs: dict[str, Any]) -> None:
    stubs["tfvars"].unlink()
    result, calls = deploy(stubs, "apply")
    assert result.returncode == 1
    assert "terraform.tfvars.example" in result.stderr
    assert calls == []


def test_destroy_destroys_with_the_same_variables(stubs: dict[str, Any]) -> None:
    result, calls = deploy(stubs, "destroy")
    assert result.returncode == 0, result.stderr
    assert steps(calls) == ["terraform init", "terraform destroy"]
    assert f"-var-file={stubs['tfvars']}" in calls[1]["args"]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("package", ["scripts/package.py"]),
        ("deploy", ["infra/deploy.py apply"]),
        ("destroy", ["infra/deploy.py destroy"]),
        (
            "lint",
            [
                "terraform fmt -check -recursive",
                "checkov --skip-download --framework terraform -d infra/",
            ],
        ),
        ("test", ["pytest"]),
    ],
)
def test_make_targets_run_these_steps(target: str, expected: list[str]) -> None:
    """`make -n`: the README's make targets are wired to the scripts tested here."""
    result = subprocess.run(
        ["make", "-n", target], cwd=c.ROOT, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for step in expected:
        assert step in result.stdout, f"make {target} does not run {step!r}:\n{result.stdout}"


WEBHOOK_SECRET = {
    "address": 'google_secret_manager_secret.webhook["notify"]',
    "values": {
        "secret_id": "batchline-notify-webhook-secret",
        "project": "my-project",
        "labels": {"batchline-env": "batchline_webhook_secret"},
    },
}


def test_deploy_makes_the_webhook_signing_secret_when_none_is_given(
    stubs: dict[str, Any],
) -> None:
    state = copy.deepcopy(STATE)
    state["values"]["root_module"]["resources"].append(WEBHOOK_SECRET)
    (stubs["dir"] / "state.json").write_text(json.dumps(state))
    result, calls = deploy(stubs, "apply", OPENAI_API_KEY="sk-o")
    assert result.returncode == 0, result.stderr
    first_apply = next(c for c in calls if steps([c])[0] == "terraform apply")
    assert "-target=google_secret_manager_secret.webhook" in first_apply["args"]
    added = {
        c["args"][3]: c["stdin"] for c in calls if steps([c])[0] == "gcloud secrets versions add"
    }
    made = added["batchline-notify-webhook-secret"]
    assert made.startswith("whsec_") and len(base64.b64decode(made[6:])) == 32
    assert not any(made in " ".join(c["args"]) for c in calls)  # stdin only
    assert made not in result.stderr and made not in result.stdout
    assert "gcloud secrets versions access latest --secret=batchline-notify-webhook-secret" in (
        result.stderr
    )
    # Given in the environment, that one is used.
    result, calls = deploy(
        stubs, "apply", OPENAI_API_KEY="sk-o", BATCHLINE_WEBHOOK_SECRET="whsec_QUJD"
    )
    assert result.returncode == 0, result.stderr
    assert "whsec_QUJD" in [c["stdin"] for c in calls]
