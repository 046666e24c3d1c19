"""Anthropic and mixed-provider files through the whole local stack:
fake-gcs-server → bridge → submit → OpenAI and Anthropic emulators → poll → collect."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchline.domain.models import JobState
from batchline.domain.providers.anthropic import ENVELOPE_BYTES
from tests.integration.anthropic_types import params_problems

from .conftest import ANTHROPIC_CHUNK_BYTES, ANTHROPIC_CHUNK_REQUESTS, CHUNK_REQUESTS, Pipeline

pytestmark = pytest.mark.e2e

HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-4-5"
MINI, GPT4O = "gpt-4.1-mini", "gpt-4o-mini"


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def with_id(obj: dict[str, Any], custom_id: str | None) -> dict[str, Any]:
    return obj if custom_id is None else {"custom_id": custom_id, **obj}


def openai_line(text: str, custom_id: str | None) -> dict[str, Any]:
    return with_id({"model": f"openai/{MINI}", "messages": user(text), "max_tokens": 50}, custom_id)


def openai_native(text: str, custom_id: str | None) -> dict[str, Any]:
    body = {"model": GPT4O, "messages": user(text), "max_completion_tokens": 50}
    return with_id({"method": "POST", "url": "/v1/chat/completions", "body": body}, custom_id)


def anthropic_line(text: str, custom_id: str | None) -> dict[str, Any]:
    obj = {"model": f"anthropic/{HAIKU}", "system": "Be brief.", "messages": user(text)}
    return with_id({**obj, "stop": ["\n\n"]}, custom_id)


def anthropic_native(text: str, custom_id: str | None) -> dict[str, Any]:
    params = {"model": SONNET, "max_tokens": 60, "messages": user(text)}
    return with_id({"params": params}, custom_id)


#: (line, the field its error names); a tenth of them valid JSON of another provider.
BAD_LINES: list[tuple[bytes, str]] = [
    (orjson.dumps({**anthropic_line("x", None), "temperature": 0.3}), "temperature"),
    (
        orjson.dumps(
            {"model": f"anthropic/{HAIKU}", "messages": [{"role": "developer", "content": "x"}]}
        ),
        "messages[0].role",
    ),
    (orjson.dumps({"custom_id": "p", "params": "not an object"}), "params"),
    (
        orjson.dumps({"params": {**anthropic_native("x", None)["params"], "stream": True}}),
        "params.stream",
    ),
    (orjson.dumps({"params": {"max_tokens": 5, "messages": user("x")}}), "params.model"),
    (
        orjson.dumps({"model": f"openai/{MINI}", "messages": [{"role": "robot", "content": "x"}]}),
        "messages[0].role",
    ),
    (b"{not json at all", "line"),
    (orjson.dumps({"model": "mistral/large-2", "messages": user("x")}), "model"),
    (orjson.dumps({**anthropic_native("x", None), "url": "/v1/messages"}), "params"),
    (
        orjson.dumps(
            {"model": f"anthropic/{HAIKU}", "messages": [{"role": "user", "content": []}]}
        ),
        "messages[0].content",
    ),
]
FORMATS = (
    ("openai", MINI, openai_line),
    ("openai", GPT4O, openai_native),
    ("anthropic", HAIKU, anthropic_line),
    ("anthropic", SONNET, anthropic_native),
)


def custom_id_for(i: int) -> str | None:
    if i % 13 == 0:
        return None  # gets line-<n>
    if i % 11 == 0:
        return f"mix/{i}/ü é"  # Anthropic would refuse it: a slash, non-ASCII, spaces
    if i == 7:
        return "long-" + "x" * 195  # 200 characters, three times Anthropic's 64
    return f"m-{i}"


def test_1500_lines_mixing_providers_and_formats_come_back_in_order(pipeline: Pipeline) -> None:
    before = {b["id"] for b in pipeline.anthropic_batches()}
    lines: list[bytes] = []
    expected: list[dict[str, Any]] = []
    for i in range(1, 1501):
        custom_id = custom_id_for(i)
        if i % 30 == 0:
            raw, field = BAD_LINES[(i // 30) % len(BAD_LINES)]
            lines.append(raw)
            expected.append({"status": "invalid", "field": field, "provider": None})
            continue
        provider, model, make = FORMATS[i % 4]
        text = f"Question {i}: what is {i} squared?"
        failing = i % 37 == 0
        if failing:
            text += " [emulator:fail=500]"
        lines.append(orjson.dumps(make(text, custom_id)))
        expected.append(
            {
                "status": "failed" if failing else "succeeded",
                "custom_id": custom_id or f"line-{i}",
                "provider": provider,
                "model": model,
            }
        )
    # No retries: each failing line fails once, in the first round (retries and failover:
    # test_failover.py).
    job_id, _ = pipeline.upload(
        "e2e/mixed-providers.jsonl", b"\n".join(lines) + b"\n", metadata={"max_retries": "0"}
    )
    job = pipeline.wait(job_id, timeout=120)
    results = pipeline.results(job)

    assert len(results) == 1500
    assert [r["line"] for r in results] == list(range(1, 1501))
    for n, (result, want) in enumerate(zip(results, expected, strict=True), start=1):
        assert result["status"] == want["status"], (n, result)
        assert result["provider"] == want["provider"], (n, result)
        if want["status"] == "invalid":
            assert result["error"]["field"] == want["field"], (n, result["error"])
            continue
        assert result["custom_id"] == want["custom_id"]  # restored, whatever Anthropic allows
        assert result["model"] == want["model"]
        if want["status"] == "failed":
            assert result["error"]["retryable"] is True and result["response"] is not None
            continue
        assert f"[batchline {want['provider']} emulator]" in result["output"]["text"]
        assert result["usage"]["input_tokens"] > 0 and result["cost_usd"] > 0
        if want["provider"] == "anthropic":
            assert result["response"]["type"] == "message"  # Anthropic's message, untouched
            assert result["output"]["finish_reason"] in ("end_turn", "max_tokens", "stop_sequence")
        else:
            assert result["response"]["object"] == "chat.completion"
    assert {r["custom_id"] for r in results if r["line"] == 7} == {"long-" + "x" * 195}

    counts = Counter(r["status"] for r in results)
    assert counts["invalid"] == 50 and counts["failed"] > 30
    summary = pipeline.summary(job)
    assert summary["counts"] == dict(counts)
    assert job.state is JobState.PARTIAL

    # One provider batch per (provider, model, chunk).
    chunks = pipeline.store.get_chunks(job_id)
    per_group = Counter((c.provider, c.model) for c in chunks)
    valid = Counter((e["provider"], e["model"]) for e in expected if e["status"] != "invalid")
    limits = {"openai": CHUNK_REQUESTS, "anthropic": ANTHROPIC_CHUNK_REQUESTS}
    assert per_group == {k: math.ceil(n / limits[k[0]]) for k, n in valid.items()}
    assert sum(c.request_count for c in chunks) == 1450
    assert len({c.batch_id for c in chunks}) == len(chunks)
    anthropic_ids = {c.batch_id for c in chunks if c.provider == "anthropic"}
    assert {b["id"] for b in pipeline.anthropic_batches()} - before == anthropic_ids
    assert len(pipeline.emulator_batches(job_id)) == sum(
        1 for c in chunks if c.provider == "openai"
    )
    # What the adapter sent is, request by request, the SDK's own batch request type.
    for batch_id in anthropic_ids:
        assert batch_id is not None
        received = pipeline.anthropic_requests(batch_id)
        assert [p for r in received for p in params_problems(r)] == []


def test_a_file_over_the_anthropic_byte_limit_makes_several_batches_and_one_output(
    pipeline: Pipeline,
) -> None:
    lines = [
        orjson.dumps(anthropic_line(f"Long question {i}: " + "lorem ipsum " * 90, f"big-{i}"))
        for i in range(600)
    ]
    data = b"\n".join(lines)
    assert len(data) > 3 * ANTHROPIC_CHUNK_BYTES
    job_id, _ = pipeline.upload("e2e/anthropic-big.jsonl", data)
    job = pipeline.wait(job_id, timeout=120)
    assert job.state is JobState.SUCCEEDED
    results = pipeline.results(job)
    assert [r["custom_id"] for r in results] == [f"big-{i}" for i in range(600)]
    chunks = pipeline.store.get_chunks(job_id)
    assert len(chunks) >= 4
    assert all(c.payload_bytes + ENVELOPE_BYTES <= ANTHROPIC_CHUNK_BYTES for c in chunks)
    assert all(c.request_count < ANTHROPIC_CHUNK_REQUESTS for c in chunks)  # bytes cut first
    created = {b["id"]: b for b in pipeline.anthropic_batches()}
    for chunk in chunks:
        assert chunk.batch_id in created
        assert created[chunk.batch_id]["emulator"]["requests"] == chunk.request_count
    assert len(pipeline.summary(job)["provider_batches"]) == len(chunks)


CRASHING_SUBMIT = """
import os, sys
from batchline.bootstrap import build
from batchline.adapters.providers.anthropic import AnthropicProvider
from batchline.services.submit import ObjectFinalized, handle_object_finalized

real_submit = AnthropicProvider.create_batch
def submit_then_die(self, payload, tag, model, uploaded=None):
    batch = real_submit(self, payload, tag, model, uploaded)
    print("provider accepted", batch.batch_id, flush=True)
    os._exit(137)  # killed before Firestore records the batch
AnthropicProvider.create_batch = submit_then_die

bucket, name, generation, size = sys.argv[1:5]
handle_object_finalized(build(), ObjectFinalized(bucket, name, generation, int(size)))
"""


def test_anthropic_submit_killed_after_create_is_adopted_not_repeated(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    # An input bucket of its own, so that the stack's submit function ignores the upload
    # and only the crashing process below submits.
    bucket = "e2e-anthropic-crash-input"
    if pipeline.gcs.lookup_bucket(bucket) is None:
        pipeline.gcs.create_bucket(bucket)
    data = b"\n".join(orjson.dumps(anthropic_line(f"q {i}", f"k/{i}")) for i in range(50))
    job_id, resource = pipeline.upload("crash/anthropic.jsonl", data, bucket=bucket)
    before = {b["id"] for b in pipeline.anthropic_batches()}
    env = {**os.environ, **pipeline.stack.client_env(), "BATCHLINE_INPUT_BUCKET": bucket}
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_SUBMIT)
    with pipeline.ticker_paused():  # else a tick may submit the planned chunk first
        done = subprocess.run(
            [
                sys.executable,
                str(script),
                bucket,
                *(resource[k] for k in ("name", "generation", "size")),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 137, done.stderr
    [created] = [b for b in pipeline.anthropic_batches() if b["id"] not in before]
    assert f"provider accepted {created['id']}" in done.stdout
    [chunk] = pipeline.store.get_chunks(job_id)
    assert chunk.batch_id is None  # Firestore never heard of the batch
    job = pipeline.wait(job_id)  # the poll function takes over once the lease expires
    assert job.state is JobState.SUCCEEDED
    # The emulator's record of creates: still that one batch, now recorded and collected.
    assert [b["id"] for b in pipeline.anthropic_batches() if b["id"] not in before] == [
        created["id"]
    ]
    [chunk] = pipeline.store.get_chunks(job_id)
    assert chunk.batch_id == created["id"] and chunk.attempts == 2
    assert [r["custom_id"] for r in pipeline.results(job)] == [f"k/{i}" for i in range(50)]


def test_anthropic_api_faults_are_retried_without_losing_lines(
    pipeline: Pipeline, anthropic_defaults: Callable[..., None]
) -> None:
    anthropic_defaults(api_error_rate=0.3, api_error_status=529)
    count = ANTHROPIC_CHUNK_REQUESTS + 20
    data = b"\n".join(orjson.dumps(anthropic_native(f"q {i}", f"f-{i}")) for i in range(count))
    before = {b["id"] for b in pipeline.anthropic_batches()}
    job_id, _ = pipeline.upload("e2e/anthropic-flaky.jsonl", data)
    job = pipeline.wait(job_id, timeout=120)
    assert job.state is JobState.SUCCEEDED and len(pipeline.results(job)) == count
    new = [b for b in pipeline.anthropic_batches() if b["id"] not in before]
    assert sorted(b["emulator"]["requests"] for b in new) == [20, ANTHROPIC_CHUNK_REQUESTS]
