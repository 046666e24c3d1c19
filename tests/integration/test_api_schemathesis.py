"""The running api function fuzzed from its own openapi.json with schemathesis: no 5xx,
and every answer as the document says (status codes, media types, bodies, headers), on
the emulators; its stateful phase follows the document's links from a submitted job to
the operations on it. functions-framework serves the real entry point (functions/main.py) on
loopback; schemathesis runs from its own venv (`make schemathesis`), since its
dependencies are not the app's.

A heavy test: a few examples per operation in `make test` and CI, many more under
`make bench` (the `heavy_budget` fixture).
"""

# ruff: noqa: F811  (the fixtures of test_functions, imported, are parameters here)
from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchline.services.api.routes import routes
from batchline_tools.local import processes, stack

from ..conftest import HeavyBudget, unavailable
from .test_functions import (  # noqa: F401  (fixtures)
    FUNCTIONS_SOURCE,
    ROOT,
    Cloud,
    cloud,
    fresh,
)

pytestmark = [pytest.mark.integration, pytest.mark.heavy]

SCHEMATHESIS = ROOT / ".venv-schemathesis" / "bin" / "schemathesis"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"schemathesis-webhook-secret-0001").decode()
#: Checks left out, each for its reason: the document declares no authentication
#: (ignored_auth, object_level_authorization: invocation is IAM's, in front of the
#: function); a request valid by the schema may still be refused by the deployment's own
#: rules (positive_data_acceptance: an `input_uri` outside the input bucket, a job id
#: that names no job), each with a declared 4xx; a job's summary and results exist only
#: once it has ended, a 404 naming its state until then, by design
#: (ensure_resource_availability asks them of a job just submitted).
EXCLUDED_CHECKS = (
    "ignored_auth",
    "object_level_authorization",
    "positive_data_acceptance",
    "ensure_resource_availability",
)


@pytest.fixture(scope="module")
def api_url(cloud: Cloud, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The api function under functions-framework (gunicorn), on the emulators."""
    port = processes.free_port()
    argv = [
        sys.executable,
        "-m",
        "functions_framework",
        "--target",
        "api",
        "--source",
        str(FUNCTIONS_SOURCE),
        "--signature-type",
        "http",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # With OpenAI webhooks enabled, so that their signature checks are fuzzed too.
    env = stack.child_env({**cloud.env, "OPENAI_WEBHOOK_SECRET": WEBHOOK_SECRET})
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    proc = processes.start_process(
        "api",
        argv,
        log_path=tmp_path_factory.mktemp("api") / "api.log",
        env=env,
        cwd=FUNCTIONS_SOURCE.parent,
        stop_leader_only=True,
    )
    try:
        processes.wait_healthy(proc, processes.tcp_check("127.0.0.1", port), timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        processes.stop_process(proc)


@pytest.mark.timeout(1800)
def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_document(
    api_url: str, heavy_budget: HeavyBudget, tmp_path: Path
) -> None:
    if not SCHEMATHESIS.exists():
        unavailable(f"{SCHEMATHESIS} is missing: run `make schemathesis`")
    examples = heavy_budget.pick(test=15, bench=300)
    argv = [
        str(SCHEMATHESIS),
        "run",
        f"{api_url}/v1/openapi.json",
        "--url",
        api_url,
        "--checks",
        "all",
        "--exclude-checks",
        ",".join(EXCLUDED_CHECKS),
        "--max-examples",
        str(examples),
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--workers",
        "1",
        "--seed",
        "15",
        "--generation-database",
        "none",
        "--request-timeout",
        "60",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(tmp_path / "schemathesis.xml"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=max(heavy_budget.seconds * 10, 600),
        check=False,
    )
    output = done.stdout + done.stderr
    print(output[-4000:])  # its summary: operations, test cases, checks
    assert done.returncode == 0, output[-8000:]
    # Every operation was tried (schemathesis leaves out the document's own path).
    report = (tmp_path / "schemathesis.xml").read_text()
    tried = set(re.findall(r'<testcase name="([^"]+)"', report))
    wanted = {f"{r.method} {r.path}" for r in routes() if r.path != "/v1/openapi.json"}
    assert tried == wanted | {"Stateful tests"}, report[:2000]
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated is not None and int(generated[1]) >= 10 * len(wanted), output[-3000:]
