"""The acceptance scenarios of the walking pipeline, through the whole local stack:
fake-gcs-server → bridge → submit → OpenAI emulator → poll → collect → output bucket."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from batchline.domain.models import JobState

from .conftest import CHUNK_REQUESTS, Pipeline

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "Say something."}]


def ok_line(i: int, custom_id: str | None = None, text: str = "Say something.") -> bytes:
    obj: dict[str, object] = {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": f"{text} #{i}"}],
    }
    if custom_id is not None:
        obj["custom_id"] = custom_id
    return orjson.dumps(obj)


# Fourteen kinds of bad line, each with the field its error must name.
BAD_LINES: list[tuple[bytes, str]] = [
    (b"{this is not json", "line"),
    (b"[1, 2, 3]", "line"),
    (orjson.dumps({"custom_id": 17, "model": "openai/gpt-4o-mini", "messages": MSG}), "custom_id"),
    (orjson.dumps({"model": "gpt-4o-mini", "messages": MSG}), "model"),
    (orjson.dumps({"model": "acme/llm-1", "messages": MSG}), "model"),
    (orjson.dumps({"model": "openai/gpt-4o-mini"}), "messages"),
    (orjson.dumps({"model": "openai/gpt-4o-mini", "messages": []}), "messages"),
    (
        orjson.dumps(
            {"model": "openai/gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]}
        ),
        "messages[0].role",
    ),
    (
        orjson.dumps({"model": "openai/gpt-4o-mini", "messages": MSG, "temperature": 9}),
        "temperature",
    ),
    (orjson.dumps({"model": "openai/gpt-4o-mini", "messages": MSG, "max_tokenz": 5}), "max_tokenz"),
    (orjson.dumps({"method": "POST", "url": "/v1/embeddings", "body": {"model": "m"}}), "url"),
    (
        b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        "line",
    ),
    (
        orjson.dumps(
            {
                "model": "openai/gpt-4o-mini",
                "messages": [{"role": "user", "content": "x" * (1024 * 1024)}],
            }
        ),
        "line",
    ),
    (b"DUPLICATE", "custom_id"),  # replaced below by a line repeating an earlier custom_id
]


def test_2000_lines_with_invalid_and_failing_lines_come_back_whole_and_in_order(
    pipeline: Pipeline,
) -> None:
    lines: list[bytes] = []
    expected: list[tuple[str, str | None, str | None]] = []  # status, custom_id, field
    bad_every, fail_every = 20, 33  # 5% invalid, ~3% failed by the emulator
    for i in range(1, 2001):
        if i % bad_every == 0:
            raw, field = BAD_LINES[(i // bad_every) % len(BAD_LINES)]
            if raw == b"DUPLICATE":
                raw = ok_line(i, custom_id="c-1")
                expected.append(("invalid", "c-1", field))
            else:
                expected.append(("invalid", None, field))
            lines.append(raw)
        elif i % fail_every == 0:
            code = 500 if i % 2 else 400
            lines.append(ok_line(i, custom_id=f"c-{i}", text=f"[emulator:fail={code}]"))
            expected.append(("failed", f"c-{i}", None))
        elif i % 7 == 0:
            lines.append(ok_line(i))  # no custom_id: gets line-<n>
            expected.append(("succeeded", None, None))
        else:
            lines.append(ok_line(i, custom_id=f"c-{i}"))
            expected.append(("succeeded", f"c-{i}", None))
    # Blank lines and CRLF endings do not count as requests.
    data = b"\r\n".join(lines[:1000]) + b"\r\n\r\n" + b"\n".join(lines[1000:]) + b"\n\n"
    # No retries: the failing lines fail once, in the first round (test_failover.py).
    job_id, _ = pipeline.upload("e2e/two-thousand.jsonl", data, metadata={"max_retries": "0"})
    job = pipeline.wait(job_id)
    # Followed as in production: the ticker's ticks fanned out, through the Pub/Sub
    # emulator, into messages naming the job, each advancing it in its own invocation.
    lines = pipeline.stack.log_path("poll").read_bytes().splitlines()
    logged = [orjson.loads(x) for x in lines if x.startswith(b'{"severity"')]
    logged = [x for x in logged if x.get("logger") == "batchline.functions"]
    assert any(x["message"] == "poll tick" for x in logged)
    assert any(x["message"] == "poll job" and x["job_id"] == job_id for x in logged)
    results = pipeline.results(job)

    assert len(results) == 2000
    numbers = [n for n, raw in enumerate(data.split(b"\n"), 1) if raw.strip(b"\r")]
    assert [r["line"] for r in results] == numbers
    # A line without custom_id gets line-<n>, n counting every line of the file.
    assert [(r["status"], r["custom_id"]) for r in results] == [
        (s, c or f"line-{n}") for (s, c, _), n in zip(expected, numbers, strict=True)
    ]
    for result, (status, _, field) in zip(results, expected, strict=True):
        if status == "invalid":
            assert result["error"]["field"] == field
            assert result["error"]["message"].startswith(f"line {result['line']}: {field}: ")
        elif status == "failed":
            assert result["error"]["type"] and result["response"] is not None
        else:
            assert result["provider"] == "openai" and result["model"] == "gpt-4o-mini"
            assert "emulator" in result["output"]["text"]
            assert result["usage"]["input_tokens"] > 0 and result["cost_usd"] > 0
    assert len({f for s, _, f in expected if s == "invalid"}) >= 8

    summary = pipeline.summary(job)
    counts = {s: sum(1 for e in expected if e[0] == s) for s in ("succeeded", "invalid", "failed")}
    assert summary["counts"] == counts and counts["invalid"] == 100 and counts["failed"] >= 55
    assert summary["blank_lines"] == 2
    assert job.state is JobState.PARTIAL
    valid = 2000 - counts["invalid"]
    assert len(summary["provider_batches"]) == -(-valid // CHUNK_REQUESTS)
    assert len(pipeline.emulator_batches(job_id)) == len(summary["provider_batches"])
    assert summary["cost"]["realtime_usd"] == pytest.approx(2 * summary["cost"]["batch_usd"])


def test_same_event_three_times_then_twice_concurrently_makes_one_batch_per_chunk(
    pipeline: Pipeline,
) -> None:
    data = b"\n".join(ok_line(i, custom_id=f"d-{i}") for i in range(CHUNK_REQUESTS * 2 + 10))
    job_id, resource = pipeline.upload("e2e/dup-sequential.jsonl", data)  # the bridge delivers once
    # Each delivery is retried on 500 as the trigger would (the bridge's own delivery may
    # still hold the planning lease); every one ends acknowledged.
    statuses = [deliver_until_acknowledged(pipeline, resource, f"dup-{n}") for n in range(3)]
    assert statuses == [200, 200, 200], statuses
    job = pipeline.wait(job_id)
    assert job.state is JobState.SUCCEEDED
    batches = pipeline.emulator_batches(job_id)
    assert sorted(int(b["metadata"]["batchline_chunk"]) for b in batches) == [0, 1, 2]

    job_id, resource = pipeline.upload("e2e/dup-concurrent.jsonl", data)
    statuses = []
    threads = [
        threading.Thread(
            target=lambda: statuses.append(pipeline.post_cloudevent(resource, "same-id"))
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The upload's own delivery (through the bridge) races these two as well: whoever
    # finds another invocation planning asks to be retried (500) rather than being
    # acknowledged, so every status may be 500; what matters is one batch per chunk.
    assert set(statuses) <= {200, 500}, statuses
    job = pipeline.wait(job_id)
    assert job.state is JobState.SUCCEEDED and len(pipeline.results(job)) == len(data.splitlines())
    batches = pipeline.emulator_batches(job_id)
    assert sorted(int(b["metadata"]["batchline_chunk"]) for b in batches) == [0, 1, 2]


def deliver_until_acknowledged(
    pipeline: Pipeline, resource: dict[str, object], event_id: str
) -> int:
    deadline = time.monotonic() + 60
    status = pipeline.post_cloudevent(resource, event_id)
    while status == 500 and time.monotonic() < deadline:
        time.sleep(0.5)
        status = pipeline.post_cloudevent(resource, event_id)
    return status


CRASHING_SUBMIT = """
import os, sys
from batchline.bootstrap import build
from batchline.adapters.providers.openai import OpenAIProvider
from batchline.services.submit import ObjectFinalized, handle_object_finalized

real_submit = OpenAIProvider.create_batch
def submit_then_die(self, payload, tag, model, uploaded=None):
    batch = real_submit(self, payload, tag, model, uploaded)
    print("provider accepted", batch.batch_id, flush=True)
    os._exit(137)  # killed before Firestore records the batch
OpenAIProvider.create_batch = submit_then_die

bucket, name, generation, size = sys.argv[1:5]
handle_object_finalized(build(), ObjectFinalized(bucket, name, generation, int(size)))
"""


def test_submit_killed_after_provider_accepted_is_adopted_by_the_retry(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    # An input bucket of its own, so the stack's submit function ignores the upload and
    # only the crashing process below submits.
    bucket = "e2e-crash-input"
    if pipeline.gcs.lookup_bucket(bucket) is None:
        pipeline.gcs.create_bucket(bucket)
    data = b"\n".join(ok_line(i, custom_id=f"k-{i}") for i in range(50))
    job_id, resource = pipeline.upload("crash/input.jsonl", data, bucket=bucket)
    env = {**os.environ, **pipeline.stack.client_env(), "BATCHLINE_INPUT_BUCKET": bucket}
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_SUBMIT)
    with pipeline.ticker_paused():  # else a tick may submit the planned chunk first
        done = subprocess.run(
            [
                sys.executable,
                str(script),
                bucket,
                resource["name"],
                resource["generation"],
                resource["size"],
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 137, done.stderr
    assert "provider accepted" in done.stdout
    [chunk] = pipeline.store.get_chunks(job_id)
    assert chunk.batch_id is None  # Firestore never heard of the batch
    job = pipeline.wait(job_id)  # the poll function takes over once the lease expires
    assert job.state is JobState.SUCCEEDED
    batches = pipeline.emulator_batches(job_id)
    assert len(batches) == 1
    [chunk] = pipeline.store.get_chunks(job_id)
    assert chunk.batch_id == batches[0]["id"] and chunk.attempts == 2
    assert [r["custom_id"] for r in pipeline.results(job)] == [f"k-{i}" for i in range(50)]


def test_expired_batch_keeps_finished_lines_and_expires_the_rest(
    pipeline: Pipeline, emulator_defaults: Callable[..., None]
) -> None:
    emulator_defaults(lines_per_second=100, expire_after_seconds=1.5)
    data = b"\n".join(ok_line(i, custom_id=f"e-{i}") for i in range(300))
    job_id, _ = pipeline.upload("e2e/expiring.jsonl", data)
    job = pipeline.wait(job_id)
    results = pipeline.results(job)
    statuses = [r["status"] for r in results]
    assert len(results) == 300 and set(statuses) == {"succeeded", "expired"}
    assert 0 < statuses.count("succeeded") < 300
    expired = [r for r in results if r["status"] == "expired"]
    assert all(r["error"]["type"] == "batch_expired" for r in expired)
    summary = pipeline.summary(job)
    assert summary["provider_batches"][0]["state"] == "expired"
    assert job.state is JobState.PARTIAL


def test_api_errors_at_the_provider_are_retried_without_losing_lines(
    pipeline: Pipeline, emulator_defaults: Callable[..., None]
) -> None:
    emulator_defaults(api_error_rate=0.3, api_error_status=500)
    data = b"\n".join(ok_line(i, custom_id=f"r-{i}") for i in range(CHUNK_REQUESTS + 5))
    job_id, _ = pipeline.upload("e2e/flaky-provider.jsonl", data)
    job = pipeline.wait(job_id, timeout=120)
    assert job.state is JobState.SUCCEEDED
    assert len(pipeline.results(job)) == CHUNK_REQUESTS + 5
    assert len(pipeline.emulator_batches(job_id)) == 2


def test_corrupt_gzip_is_a_rejected_job_with_a_reason(pipeline: Pipeline) -> None:
    data = gzip.compress(b"\n".join(ok_line(i) for i in range(10)))[:-20]
    job_id, _ = pipeline.upload("e2e/corrupt.jsonl.gz", data)
    job = pipeline.wait(job_id)
    assert job.state is JobState.REJECTED
    summary = pipeline.summary(job)
    assert summary["state"] == "rejected" and "decompress" in summary["error"]
    assert pipeline.emulator_batches(job_id) == []


def test_a_non_ascii_object_name_becomes_a_job_and_its_results(pipeline: Pipeline) -> None:
    """Through the real event bridge: the name goes into a CloudEvent header."""
    name = "e2e/résumé 日本 ü.jsonl"
    job_id, _ = pipeline.upload(name, b"\n".join(ok_line(i, custom_id=f"u-{i}") for i in range(3)))
    job = pipeline.wait(job_id)
    assert job.state is JobState.SUCCEEDED
    assert job.source.name == name
    assert [r["custom_id"] for r in pipeline.results(job)] == ["u-0", "u-1", "u-2"]
