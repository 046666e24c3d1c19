"""`batchline schema push|list|show`, `submit`'s structured-output options, and
`read_results` on gs:// sources, against fake-gcs-server.

The CLI targets a "project" whose buckets live on the session's fake-gcs-server
(STORAGE_EMULATOR_HOST), as it would a GCP project: `--project` and the bucket flags.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.cloud import storage
from pydantic import BaseModel

from batchline import BatchError, BatchSuccess, ResultsFileError, read_results
from batchline.adapters.gcs import make_client
from batchline.domain.paths import registered_schema_uri
from batchline_tools.cli import main
from batchline_tools.local.stack import create_bucket

pytestmark = pytest.mark.integration

MODELS = """
from pydantic import BaseModel, Field


class Item(BaseModel):
    name: str
    price: float = Field(ge=0)


class Invoice(BaseModel):
    number: str
    items: list[Item]


class NotAModel:
    pass


INLINE = {"type": "object", "properties": {"a": {"type": "string"}}}
"""


class Item(BaseModel):
    name: str
    price: float


class Invoice(BaseModel):
    number: str
    items: list[Item]


@dataclass
class Target:
    project: str
    work: str
    input: str
    output: str
    client: storage.Client
    root: Path  # the current directory, holding the package `package`
    package: str

    def flags(self) -> list[str]:
        return ["--project", self.project, "--work-bucket", self.work]

    def blob(self, bucket: str, name: str) -> storage.Blob:
        blob = self.client.bucket(bucket).get_blob(name)
        assert blob is not None, f"gs://{bucket}/{name} does not exist"
        return blob


@pytest.fixture
def target(gcs_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    project = f"bl-schema-{uuid.uuid4().hex[:8]}"
    buckets = [f"bl-{kind}-{uuid.uuid4().hex[:10]}" for kind in ("work", "in", "out")]
    for bucket in buckets:
        create_bucket(gcs_server, project, bucket)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", project)
    for name in ("BATCHLINE_WORK_BUCKET", "BATCHLINE_INPUT_BUCKET", "BATCHLINE_OUTPUT_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    # A package of the user's, importable only from the current directory.
    package = f"userpkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "models.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI may add the cwd
    try:
        yield Target(project, *buckets, make_client(project), tmp_path, package)
    finally:
        for module in [m for m in sys.modules if m.split(".")[0] == package]:
            del sys.modules[module]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- schema push / list / show ------------------------------------------------------------


def test_push_a_pydantic_class_from_the_current_directory(target: Target) -> None:
    """As a user runs it: the console script, in the directory that holds the package."""
    batchline = Path(sys.executable).with_name("batchline")
    source = f"{target.package}.models:Invoice"
    done = subprocess.run(
        [str(batchline), "schema", "push", source, *target.flags()],
        cwd=target.root,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr

    uri = registered_schema_uri(target.work, "Invoice")
    assert uri == f"gs://{target.work}/schemas/Invoice.json"
    blob = target.blob(target.work, "schemas/Invoice.json")
    stored = orjson.loads(blob.download_as_bytes())
    assert stored["type"] == "object"
    assert stored["title"] == "Invoice"
    assert list(stored["properties"]) == ["number", "items"]  # the class's order
    assert stored["$defs"]["Item"]["properties"]["price"]["minimum"] == 0
    assert blob.content_type == "application/json"
    assert done.stdout.strip() == f"pushed schema Invoice to {uri} ({blob.size} bytes)"


def test_push_list_show_round_trip(
    target: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "schema", "list", *target.flags())
    assert (code, err) == (0, "")
    assert out.strip() == f"no schemas registered in gs://{target.work}/schemas/"

    source = f"{target.package}.models:Invoice"
    code, out, err = run(capsys, "schema", "push", source, "--name", "invoice.v2", *target.flags())
    assert code == 0, err
    assert "pushed schema invoice.v2 to " in out

    schema_file = tmp_path / "ticket.json"
    ticket = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"severity": {"enum": ["low", "high"]}, "summary": {"type": "string"}},
        "required": ["severity", "summary"],
        "additionalProperties": False,
    }
    schema_file.write_bytes(orjson.dumps(ticket))
    code, out, err = run(
        capsys, "schema", "push", str(schema_file), "--name", "Ticket", "--json", *target.flags()
    )
    assert code == 0, err
    pushed = orjson.loads(out)
    assert pushed["name"] == "Ticket"
    assert pushed["uri"] == registered_schema_uri(target.work, "Ticket")
    assert pushed["size"] == target.blob(target.work, "schemas/Ticket.json").size

    # A dict in a module is a schema too; its default name is the variable's.
    code, out, err = run(
        capsys, "schema", "push", f"{target.package}.models:INLINE", *target.flags()
    )
    assert code == 0, err
    assert "pushed schema INLINE" in out

    code, out, err = run(capsys, "schema", "list", "--json", *target.flags())
    assert code == 0, err
    listed = orjson.loads(out)
    assert [r["name"] for r in listed] == ["INLINE", "Ticket", "invoice.v2"]
    assert listed[1]["source"] == str(schema_file)
    assert listed[2]["source"] == source

    code, out, err = run(capsys, "schema", "list", *target.flags())
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == ["INLINE", "Ticket", "invoice.v2"]

    code, out, err = run(capsys, "schema", "show", "Ticket", *target.flags())
    assert code == 0, err
    assert orjson.loads(out) == ticket
    assert list(orjson.loads(out)["properties"]) == ["severity", "summary"]

    # Pushing again replaces the schema.
    ticket["required"] = ["summary"]
    schema_file.write_bytes(orjson.dumps(ticket))
    assert (
        run(capsys, "schema", "push", str(schema_file), "--name", "Ticket", *target.flags())[0] == 0
    )
    assert orjson.loads(run(capsys, "schema", "show", "Ticket", *target.flags())[1]) == ticket


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (b'{"type": "objekt"}', ["--name", "X"], 'type: not a valid JSON Schema ("objekt" is not'),
        (b'{"type": "array", "items": {}}', ["--name", "X"], "must describe an object"),
        (b"[1, 2]", ["--name", "X"], "a JSON Schema must be an object"),
        (b"{not json", ["--name", "X"], "is not JSON"),
        (b'{"type": "object"}', [], "give the schema a name with --name"),
        (b'{"type": "object"}', ["--name", "bad/name"], "'bad/name' is not a valid schema name"),
    ],
)
def test_push_reports_a_bad_schema_file(
    target: Target,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    extra: list[str],
    message: str,
) -> None:
    path = tmp_path / "schema.json"
    path.write_bytes(content)

    code, _, err = run(capsys, "schema", "push", str(path), *extra, *target.flags())

    assert code == 1
    assert message in err
    assert err.startswith("batchline: ")
    assert list(target.client.list_blobs(target.work)) == []


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("models:NotAModel", "is not a pydantic model"),
        ("models:Missing", "has no Missing"),
        ("nowhere:Invoice", "cannot import"),
    ],
)
def test_push_reports_a_bad_class(
    target: Target, capsys: pytest.CaptureFixture[str], attr: str, message: str
) -> None:
    code, _, err = run(capsys, "schema", "push", f"{target.package}.{attr}", *target.flags())

    assert code == 1
    assert message in err


def test_schema_commands_with_project_need_the_work_bucket(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "schema", "list", "--project", target.project)
    assert code == 1
    assert "--work-bucket" in err


def test_show_unknown_schema(target: Target, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "schema", "show", "Nope", *target.flags())

    assert code == 1
    assert f"no schema 'Nope' is registered ({registered_schema_uri(target.work, 'Nope')})" in err


# -- submit's options ---------------------------------------------------------------------


def test_submit_puts_the_structured_output_options_in_the_metadata(
    target: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = tmp_path / "invoices.jsonl"
    requests.write_text('{"messages": [{"role": "user", "content": "Invoice A-1: tea 2.50"}]}\n')
    flags = [
        *target.flags(),
        "--input-bucket",
        target.input,
        "--output-bucket",
        target.output,
    ]
    code, _, err = run(capsys, "submit", str(requests), "--schema", "Invoice", *flags)
    assert code == 1
    assert "no schema 'Invoice' is registered" in err  # nothing uploaded for a typo

    assert run(capsys, "schema", "push", f"{target.package}.models:Invoice", *flags)[0] == 0
    code, out, err = run(
        capsys,
        "submit",
        str(requests),
        "--model",
        "openai/gpt-4.1-mini",
        "--schema",
        "Invoice",
        "--max-repair-attempts",
        "2",
        "--max-cost-usd",
        "1.5",
        "--json",
        *flags,
    )
    assert code == 0, err
    assert orjson.loads(out)["job_id"]
    assert target.blob(target.input, "invoices.jsonl").metadata == {
        "model": "openai/gpt-4.1-mini",
        "schema": "Invoice",
        "max_repair_attempts": "2",
        "max_cost_usd": "1.5",
    }


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-repair-attempts", "-1"], "--max-repair-attempts must be 0 or more"),
        (["--max-cost-usd", "0"], "--max-cost-usd must be a positive number"),
        (["--schema", "no such"], "is not a valid schema name"),
    ],
)
def test_submit_rejects_bad_options(
    target: Target,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    requests = tmp_path / "r.jsonl"
    requests.write_text("{}\n")
    code, _, err = run(
        capsys,
        "submit",
        str(requests),
        *flags,
        *target.flags(),
        "--input-bucket",
        target.input,
        "--output-bucket",
        target.output,
    )
    assert code == 1
    assert message in err
    assert list(target.client.list_blobs(target.input)) == []


# -- read_results on gs:// ----------------------------------------------------------------


def result_line(n: int, parsed: Any) -> dict[str, Any]:
    return {
        "custom_id": f"inv-{n}",
        "line": n,
        "status": "succeeded",
        "provider": "openai",
        "model": "gpt-4.1-mini",
        "output": {
            "text": orjson.dumps(parsed).decode(),
            "parsed": parsed,
            "finish_reason": "stop",
        },
        "usage": {"input_tokens": 10, "output_tokens": 5},
        "cost_usd": 0.0001,
        "error": None,
        "response": {},
        "attempts": [{}],
    }


SCHEMA_FAILURE = {
    "custom_id": "inv-3",
    "line": 3,
    "status": "failed",
    "provider": "openai",
    "model": "gpt-4.1-mini",
    "output": None,
    "usage": {"input_tokens": 10, "output_tokens": 5},
    "cost_usd": 0.0001,
    "error": {
        "type": "schema_validation",
        "message": "'items' is a required property",
        "retryable": False,
        "path": "$",
    },
    "response": {},
    "attempts": [{}, {}, {}],
}


def test_read_results_from_a_job_output_prefix(target: Target) -> None:
    records = [
        result_line(1, {"number": "A-1", "items": [{"name": "tea", "price": 2.5}]}),
        result_line(2, {"number": "A-2", "items": [{"name": "cup"}]}),
        SCHEMA_FAILURE,
    ]
    data = b"".join(orjson.dumps(r) + b"\n" for r in records)
    prefix = f"gs://{target.output}/invoices/job-1/"
    target.client.bucket(target.output).blob("invoices/job-1/results.jsonl").upload_from_string(
        data
    )

    # The client comes from the environment (STORAGE_EMULATOR_HOST), built on first read.
    for source in (prefix, prefix + "results.jsonl"):
        first, second, third = read_results(source, Invoice)
        assert isinstance(first, BatchSuccess)
        assert first.parsed == Invoice(number="A-1", items=[Item(name="tea", price=2.5)])
        assert isinstance(second, BatchError)
        assert (second.error_type, second.path) == ("model_validation", "$.items[0].price")
        assert isinstance(third, BatchError)
        assert (third.status, third.error_type, third.path) == ("failed", "schema_validation", "$")

    # Or the caller's own client.
    untyped = list(read_results(prefix, client=target.client))
    assert [r.custom_id for r in untyped] == ["inv-1", "inv-2", "inv-3"]
    assert isinstance(untyped[1], BatchSuccess)
    assert untyped[1].parsed == {"number": "A-2", "items": [{"name": "cup"}]}


def test_read_results_streams_a_large_gzip_object(target: Target) -> None:
    """Larger than one download chunk (8 MiB), gzip-compressed: read whole, in order."""
    count = 40_000
    pad = "x" * 300
    data = b"".join(
        orjson.dumps(result_line(n, {"number": str(n), "items": [{"name": pad, "price": n}]}))
        + b"\n"
        for n in range(1, count + 1)
    )
    assert len(data) > 9 * 1024 * 1024
    blob = target.client.bucket(target.output).blob("big/results.jsonl.gz")
    blob.upload_from_string(gzip.compress(data, compresslevel=1), content_type="application/gzip")

    n = 0
    for n, result in enumerate(read_results(f"gs://{target.output}/big/results.jsonl.gz"), 1):
        assert isinstance(result, BatchSuccess)
        assert result.line == n
    assert n == count


def test_read_results_of_a_missing_object_or_bad_uri(target: Target) -> None:
    missing = re.escape(f"gs://{target.output}/nope/results.jsonl")
    with pytest.raises(
        ResultsFileError, match=f"cannot read {missing}: reading {missing}.*not found"
    ):
        list(read_results(f"gs://{target.output}/nope/"))
    with pytest.raises(ResultsFileError, match="needs a bucket and an object name"):
        list(read_results("gs://just-a-bucket"))
