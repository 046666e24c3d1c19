"""Planning a file whose lines break things: each bad line is that line's `invalid`, never
the file's end, and failures that are not a line's still stop planning."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import orjson
import pytest

from batchline.domain.estimate import Estimate
from batchline.domain.models import JobOptions, JobState
from batchline.errors import RetryableError
from batchline.services.submit import handle_object_finalized
from batchline_tools.memory import MemoryBlobStore

from .fakes import make_deps
from .plan_helpers import plan_file
from .test_pipeline import finish, upload

MSG = [{"role": "user", "content": "hi"}]


def good(custom_id: str) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "model": "openai/gpt-4o-mini", "messages": MSG})


def deep_line(custom_id: str, depth: int = 300) -> bytes:
    """An OpenAI native line whose body nests `depth` levels (orjson cannot write it)."""
    nested = b'{"a":' * depth + b'"bottom"' + b"}" * depth
    return (
        b'{"custom_id": "%s", "method": "POST", "url": "/v1/chat/completions", "body": '
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], '
        b'"metadata": %s}}' % (custom_id.encode(), nested)
    )


def test_a_300_deep_line_among_good_ones_is_invalid_and_the_rest_is_submitted() -> None:
    deps, provider, _ = make_deps(max_requests=2)
    data = b"\n".join([good("a"), good("b"), deep_line("deep"), good("c"), good("d")]) + b"\n"
    assert orjson.loads(deep_line("deep"))  # valid JSON, under orjson's 1,024 levels
    job = handle_object_finalized(deps, upload(deps, data))
    assert job is not None and job.state is JobState.RUNNING, job
    assert job.counts == {"lines": 5, "blank_lines": 0, "invalid": 1, "requests": 4}
    assert sum(len(b.request_ids) for b in provider.batches.values()) == 4
    provider.end()
    final, results = finish(deps, job.job_id)
    assert [(r["custom_id"], r["status"]) for r in results] == [
        ("a", "succeeded"),
        ("b", "succeeded"),
        ("deep", "invalid"),
        ("c", "succeeded"),
        ("d", "succeeded"),
    ]
    error: Any = results[2]["error"]
    assert error["field"] == "line" and "nested too deeply" in error["message"]
    assert final.state is JobState.PARTIAL


def test_an_integer_beyond_64_bits_is_refused_naming_its_path_never_sent_as_a_float() -> None:
    deps, _, _ = make_deps()
    seed = (
        b'{"custom_id": "s", "method": "POST", "url": "/v1/chat/completions", "body": '
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], '
        b'"seed": 36893488147419103232}}'
    )
    max_tokens = good("m")[:-1] + b', "max_tokens": 99999999999999999999}'
    schema = (
        b'{"custom_id": "r", "model": "anthropic/claude-haiku-4-5", "messages": '
        b'[{"role": "user", "content": "hi"}], "response_schema": {"type": "object", '
        b'"properties": {"n": {"type": "integer", "maximum": 100000000000000000000}}}}'
    )
    planned = plan_file(deps, b"\n".join([good("a"), seed, max_tokens, schema]))
    assert planned.chunked_lines == [1]
    assert {n: (r["custom_id"], r["error"]["field"]) for n, r in planned.invalid.items()} == {  # type: ignore[index]
        2: ("s", "body.seed"),
        3: ("m", "max_tokens"),
        4: ("r", "response_schema.properties.n.maximum"),
    }
    assert "36893488147419103232 is beyond the 64-bit range" in str(planned.invalid[2]["error"])


def test_a_line_over_the_limit_keeps_its_custom_id() -> None:
    deps, _, _ = make_deps()
    deps.settings = replace(deps.settings, max_line_bytes=2000)
    document = {"type": "text", "text": "A" * 10_000, "custom_id": "decoy"}
    big = orjson.dumps(
        {
            "model": "anthropic/claude-haiku-4-5",
            "messages": [{"role": "user", "content": [document]}],
            "custom_id": "invoice-0042",
        }
    )
    planned = plan_file(
        deps, b"\n".join([good("a"), big, orjson.dumps({"messages": [big.decode()]})])
    )
    assert planned.chunked_lines == [1]
    assert planned.invalid[2]["custom_id"] == "invoice-0042"
    assert planned.invalid[3]["custom_id"] == "line-3"
    assert "exceeds the limit of 2000 bytes" in str(planned.invalid[2]["error"])


def test_any_exception_from_one_line_s_work_makes_that_line_invalid(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = Estimate.add

    def add(self: Estimate, provider: str, model: str, line: Any) -> None:
        if b"boom" in orjson.dumps(line):
            raise ZeroDivisionError("division by zero")
        original(self, provider, model, line)

    monkeypatch.setattr(Estimate, "add", add)
    deps, _, _ = make_deps()
    boom = orjson.dumps({"custom_id": "x", "model": "openai/gpt-4o-mini", "messages": MSG})
    boom = boom.replace(b'"hi"', b'"boom"')
    with caplog.at_level(logging.WARNING):
        planned = plan_file(deps, b"\n".join([good("a"), boom, good("b")]))
    assert planned.chunked_lines == [1, 3]
    assert planned.invalid[2]["custom_id"] == "x"
    assert planned.invalid[2]["error"] == {
        "type": "invalid_request",
        "message": "line 2: line: could not be encoded: ZeroDivisionError: division by zero",
        "field": "line",
        "retryable": False,
    }
    assert planned.plan.estimate.to_dict()["requests"] == 2
    [record] = [r for r in caplog.records if "could not be planned" in r.getMessage()]
    assert record.fields["line"] == 2 and record.fields["error"] == "ZeroDivisionError"  # type: ignore[attr-defined]
    assert "boom" not in str(record.__dict__)  # logs never carry request bodies


@pytest.mark.parametrize("error", [RetryableError("GCS said 503"), ConnectionResetError("reset")])
def test_failures_that_are_not_the_line_s_still_stop_planning(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    deps, _, _ = make_deps()
    read_bytes = MemoryBlobStore.read_bytes

    def failing(self: MemoryBlobStore, uri: str) -> bytes:
        if "/schemas/" in uri:
            raise error
        return read_bytes(self, uri)

    monkeypatch.setattr(MemoryBlobStore, "read_bytes", failing)
    with_schema = good("a")[:-1] + b', "schema": "Invoice"}'
    with pytest.raises(type(error)) as raised:
        plan_file(deps, b"\n".join([good("z"), with_schema]))
    assert raised.value is error
    with pytest.raises(type(error)) as raised:  # the job's default schema, read up front
        plan_file(deps, good("z"), JobOptions(schema="Invoice"))
    assert raised.value is error


def test_a_job_default_model_outside_the_charset_makes_lines_invalid() -> None:
    deps, _, _ = make_deps()
    options = JobOptions(model="vertex/../../projects/other/locations/x/models/y")
    planned = plan_file(deps, orjson.dumps({"messages": MSG}), options)
    assert planned.invalid[1]["error"]["field"] == "model (job default)"  # type: ignore[index]


def test_a_3_mb_document_fits_the_default_line_limit() -> None:
    """The limit comes from the providers' per-request limits (32 MB at Anthropic)."""
    deps, _, _ = make_deps()
    assert deps.settings.max_line_bytes == 32 * 1024 * 1024
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBE" * 750_000}
    line = orjson.dumps(
        {
            "custom_id": "doc",
            "model": "anthropic/claude-haiku-4-5",
            "messages": [{"role": "user", "content": [{"type": "document", "source": pdf}]}],
        }
    )
    assert len(line) > 3_000_000
    planned = plan_file(deps, line + b"\n" + good("a"))
    assert planned.chunked_lines == [1, 2] and not planned.invalid
