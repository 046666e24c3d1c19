"""`make deploy` and `make destroy`.

deploy: build the package (scripts/package.py), `terraform init`, create the API key
secrets first, make sure each has a value, then `terraform apply` everything. Cloud
Functions refuses to deploy a function whose secret has no version, hence the order.
There is one secret per provider in `enabled_providers` (default: openai only). A secret
without a value gets one from the environment variable of the same name (OPENAI_API_KEY,
ANTHROPIC_API_KEY), piped to `gcloud secrets versions add` on stdin: the key never
appears in a command line, in Terraform's variables or in its state. With no such
variable the deploy stops and says which command to run (or to take the provider out of
`enabled_providers`). A key set for a provider that is not enabled is not deployed; the
deploy goes on and says so. Vertex AI has no key (the functions reach it through IAM), so
it has no secret here.

destroy: `terraform destroy` with the same variables.

The webhook secrets (infra's local.webhooks) are filled the same way: OPENAI_WEBHOOK_SECRET
(only with webhooks.openai_inbound) from the environment; BATCHLINE_WEBHOOK_SECRET, which
signs the jobs' webhooks, from the environment or, when unset, made here (`whsec_` and 32
random bytes): read it with `gcloud secrets versions access latest --secret=...`.

Environment: TFVARS (default infra/terraform.tfvars), AUTO_APPROVE=1 to skip Terraform's
prompts, the provider keys and the webhook secrets.
"""

from __future__ import annotations

import base64
import json
import os
import secrets as random_bytes
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

INFRA = Path(__file__).resolve().parent
ROOT = INFRA.parent
SECRETS = "google_secret_manager_secret.api_key"
WEBHOOK_SECRETS = "google_secret_manager_secret.webhook"
#: The secret that signs the jobs' webhooks: made here when the environment has none.
GENERATED_SECRET_ENV = "BATCHLINE_WEBHOOK_SECRET"
ENV_LABEL = "batchline-env"
# Provider -> the variable holding its API key: the providers in infra's local.providers
# (main.tf) that have an api_key_env, which tests/infra checks this equals. Keyless ones
# (vertex) are not here.
API_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


class DeployError(Exception):
    pass


def run(*command: str, stdin: str | None = None, capture: bool = False) -> str:
    """Run a command from the repository root; raise DeployError if it fails."""
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    result = subprocess.run(
        command,
        cwd=ROOT,
        input=stdin,
        text=True,
        check=False,
        stdout=subprocess.PIPE if capture else None,
    )
    if result.returncode != 0:
        raise DeployError(f"{command[0]} {command[1]} failed (exit {result.returncode})")
    return result.stdout or ""


def terraform(*args: str, capture: bool = False) -> str:
    return run("terraform", f"-chdir={INFRA}", *args, capture=capture)


def package() -> Path:
    out = run(sys.executable, str(ROOT / "scripts" / "package.py"), capture=True).strip()
    return Path(out.splitlines()[-1])


def secrets_in_state() -> list[dict[str, Any]]:
    """The API key secrets Terraform manages: secret_id, project and the env variable."""
    state = json.loads(terraform("show", "-json", capture=True) or "{}")
    found = []
    for resource in (state.get("values") or {}).get("root_module", {}).get("resources", []):
        if resource.get("address", "").startswith((SECRETS + "[", WEBHOOK_SECRETS + "[")):
            values = resource["values"]
            found.append(
                {
                    "secret_id": values["secret_id"],
                    "project": values["project"],
                    "env": (values.get("labels") or {}).get(ENV_LABEL, "").upper(),
                }
            )
    return found


def has_version(secret: dict[str, Any]) -> bool:
    listed = run(
        "gcloud",
        "secrets",
        "versions",
        "list",
        secret["secret_id"],
        f"--project={secret['project']}",
        "--filter=state:ENABLED",
        "--limit=1",
        "--format=value(name)",
        capture=True,
    )
    return bool(listed.strip())


def warn_unused_keys(secrets: list[dict[str, Any]]) -> None:
    deployed = {s["env"] for s in secrets}
    for provider, env in API_KEY_ENV.items():
        if os.environ.get(env) and env not in deployed:
            print(
                f"deploy: warning: {env} is set, but {provider} is not in enabled_providers, so "
                f"its key is not deployed and {provider} lines will fail; add {provider!r} to "
                "enabled_providers in your tfvars to run it",
                file=sys.stderr,
            )


def fill_secrets() -> None:
    missing = []
    secrets = secrets_in_state()
    warn_unused_keys(secrets)
    for secret in secrets:
        if has_version(secret):
            continue
        value = os.environ.get(secret["env"], "")
        if not value and secret["env"] == GENERATED_SECRET_ENV:
            value = "whsec_" + base64.b64encode(random_bytes.token_bytes(32)).decode()
            print(
                f"deploy: made a webhook signing secret in {secret['secret_id']}; give it to "
                f"your receivers: gcloud secrets versions access latest --secret="
                f"{secret['secret_id']} --project={secret['project']}",
                file=sys.stderr,
            )
        if not value:
            missing.append(secret)
            continue
        run(
            "gcloud",
            "secrets",
            "versions",
            "add",
            secret["secret_id"],
            f"--project={secret['project']}",
            "--data-file=-",
            stdin=value,
        )
    if missing:
        lines = [
            f'  printf %s "${s["env"]}" | gcloud secrets versions add {s["secret_id"]} '
            f"--project={s['project']} --data-file=-"
            for s in missing
        ]
        raise DeployError(
            "these secrets have no value yet; set the variable and run `make deploy` again, "
            "add it yourself, or take the provider out of enabled_providers:\n" + "\n".join(lines)
        )


def main(argv: list[str]) -> int:
    action = argv[1] if len(argv) > 1 else "apply"
    try:
        if action not in ("apply", "destroy"):
            raise DeployError(f"usage: {argv[0]} apply|destroy")
        for tool in ("terraform", "gcloud"):
            if shutil.which(tool) is None:
                raise DeployError(f"{tool} is not installed (see the README's Deploy section)")
        tfvars = Path(os.environ.get("TFVARS") or INFRA / "terraform.tfvars").resolve()
        if not tfvars.is_file():
            raise DeployError(
                f"no {tfvars}: copy infra/terraform.tfvars.example there and set project_id"
            )
        bundle = package()
        variables = ["-input=false", f"-var-file={tfvars}", f"-var=bundle_path={bundle}"]
        approve = ["-auto-approve"] if os.environ.get("AUTO_APPROVE") == "1" else []
        terraform("init", "-input=false")
        if action == "destroy":
            terraform("destroy", *variables, *approve)
            return 0
        terraform("apply", *variables, *approve, f"-target={SECRETS}", f"-target={WEBHOOK_SECRETS}")
        fill_secrets()
        terraform("apply", *variables, *approve)
        terraform("output")
    except DeployError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
