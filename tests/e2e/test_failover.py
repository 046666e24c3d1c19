"""Retries and failover through the whole local stack: lines that fail at one provider are
sent again, then to the next model of the job's `fallback`, inside the job."""

from __future__ import annotations

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

from .conftest import CHUNK_REQUESTS, Pipeline

pytestmark = pytest.mark.e2e

FIRST = "openai/gpt-4.1-mini"
HAIKU = "anthropic/claude-haiku-4-5"
FLASH = "vertex/gemini-2.5-flash"
#: Rounds of batches take a few poll ticks each: a job that fails over twice takes longer.
ROUNDS_WAIT_SECONDS = 300.0


def neutral(i: int, text: str | None = None) -> bytes:
    content = text or f"question {i}: name a colour"
    line = {"custom_id": f"q-{i}", "model": FIRST, "max_tokens": 40}
    return orjson.dumps({**line, "messages": [{"role": "user", "content": content}]})


def chain_of(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["reason"], f"{a['provider']}/{a['model']}") for a in record["attempts"]]


def test_3000_lines_retry_and_fail_over_until_every_line_is_answered_once(
    pipeline: Pipeline,
    emulator_defaults: Callable[..., None],
    anthropic_defaults: Callable[..., None],
) -> None:
    count = 3000
    assert count > 5 * CHUNK_REQUESTS  # several OpenAI batches, one of them expires
    # OpenAI fails a tenth of the lines with 500 (the same lines every time: a seeded hash
    # of the request id), and the first batch expires half done; Anthropic errors 5%.
    emulator_defaults(
        line_fail_rate=0.1, expire_after_lines=CHUNK_REQUESTS // 2, expire_next_batches=1
    )
    anthropic_defaults(errored_rate=0.05)
    data = b"\n".join(neutral(i) for i in range(count))
    job_id, _ = pipeline.upload(
        "e2e/failover-3000.jsonl", data, metadata={"fallback": f"{HAIKU},{FLASH}"}
    )
    job = pipeline.wait(job_id, timeout=ROUNDS_WAIT_SECONDS)
    results = pipeline.results(job)
    # Every line once, in order, and every one answered by some provider.
    assert [r["custom_id"] for r in results] == [f"q-{i}" for i in range(count)]
    assert job.state is JobState.SUCCEEDED, Counter(r["status"] for r in results)
    chains = Counter(tuple(reason for reason, _ in chain_of(r)) for r in results)
    # The expired chunk's unfinished lines went again to OpenAI (a retry) ...
    assert any(c[:2] == ("first", "retry") and len(c) == 2 for c in chains), chains
    # ... lines OpenAI always fails went on to Anthropic, and those it errs on to Vertex.
    to_vertex = [r for r in results if r["provider"] == "vertex"]
    assert to_vertex, chains
    assert chain_of(to_vertex[0]) == [
        ("first", FIRST),
        ("retry", FIRST),
        ("failover", HAIKU),
        ("retry", HAIKU),
        ("failover", FLASH),
    ]
    assert [a["status"] for a in to_vertex[0]["attempts"]] == ["failed"] * 4 + ["succeeded"]
    moved = Counter(r["provider"] for r in results)
    assert 0.05 * count < moved["anthropic"] + moved["vertex"] < 0.2 * count
    # Costs: each line's is the sum of its attempts', the job's the sum of its lines'.
    for r in results:
        assert r["cost_usd"] == pytest.approx(
            sum(a["cost_usd"] or 0 for a in r["attempts"]), rel=1e-9, abs=1e-12
        )
    summary = pipeline.summary(job)
    assert summary["cost"]["batch_usd"] == pytest.approx(
        sum(r["cost_usd"] for r in results), rel=1e-6
    )
    providers = summary["providers"]
    assert sum(p["succeeded"] for p in providers.values()) == count
    attempts = Counter(a["provider"] for r in results for a in r["attempts"])
    assert {name: p["sent"] for name, p in providers.items()} == dict(attempts)
    assert providers["openai"]["failed_over_from"] == providers["anthropic"]["failed_over_to"]
    assert providers["anthropic"]["failed_over_from"] == providers["vertex"]["failed_over_to"]
    assert {r["reason"] for r in summary["rounds"]} == {"retry", "failover"}


def test_a_batch_that_fails_validation_fails_its_lines_over_or_names_the_error(
    pipeline: Pipeline, emulator_defaults: Callable[..., None]
) -> None:
    count = 30
    data = b"\n".join(neutral(i) for i in range(count))
    emulator_defaults(batch_fail_next=1)
    job_id, _ = pipeline.upload("e2e/failover-validation.jsonl", data, metadata={"fallback": HAIKU})
    job = pipeline.wait(job_id, timeout=ROUNDS_WAIT_SECONDS)
    assert job.state is JobState.SUCCEEDED
    results = pipeline.results(job)
    assert {r["provider"] for r in results} == {"anthropic"}
    # A failed batch is not retried at its model: it fails over at once.
    assert chain_of(results[0]) == [("first", FIRST), ("failover", HAIKU)]
    assert results[0]["attempts"][0]["error"]["type"] == "batch_failed"

    emulator_defaults(batch_fail_next=1)
    job_id, _ = pipeline.upload("e2e/failover-validation-alone.jsonl", data)
    job = pipeline.wait(job_id, timeout=ROUNDS_WAIT_SECONDS)
    assert job.state is JobState.FAILED
    results = pipeline.results(job)
    assert {r["status"] for r in results} == {"failed"}
    error = results[0]["error"]
    assert error["type"] == "batch_failed" and "the batch failed" in error["message"]
    assert len(results[0]["attempts"]) == 1


CRASHING_FAILOVER = """
import json, os, sys, time
from batchline.bootstrap import build
from batchline.adapters.providers.anthropic import AnthropicProvider
from batchline.domain.models import JobState
from batchline.services.advance import advance_job
from batchline.services.collect import collect
from batchline.services.plan import new_owner
from batchline.services.submit import ObjectFinalized, handle_object_finalized

real_create = AnthropicProvider.create_batch
def create_then_die(self, payload, tag, model, uploaded=None):
    batch = real_create(self, payload, tag, model, uploaded)
    print("provider accepted", batch.batch_id, "for chunk", tag.chunk, flush=True)
    os._exit(137)  # killed before Firestore records the failover batch
AnthropicProvider.create_batch = create_then_die

bucket, name, generation, size, metadata = sys.argv[1:6]
deps = build()
event = ObjectFinalized(bucket, name, generation, int(size), metadata=json.loads(metadata))
job = handle_object_finalized(deps, event)
owner = new_owner()
deadline = time.monotonic() + 100
while time.monotonic() < deadline:
    job = deps.store.get_job(job.job_id)
    if job.state.terminal:
        break
    if job.state is JobState.COLLECTING:
        collect(deps, job.job_id)
    elif job.state in (JobState.SUBMITTING, JobState.RUNNING):
        advance_job(deps, job, owner, deps.clock.now() + 30)
    time.sleep(0.2)
chunks = deps.store.get_chunks(job.job_id)
print("never reached the failover create:", job.state, job.error, flush=True)
for c in chunks:
    print("chunk", c.index, c.provider, c.state, c.round_reason, c.error, flush=True)
"""


def test_a_failover_batch_created_by_a_process_killed_before_recording_it_is_adopted(
    pipeline: Pipeline, tmp_path: Path, emulator_defaults: Callable[..., None]
) -> None:
    # An input bucket of its own: the stack's submit function ignores the upload, and
    # only the crashing process submits (the ticker is paused while it runs).
    bucket = "e2e-failover-crash-input"
    if pipeline.gcs.lookup_bucket(bucket) is None:
        pipeline.gcs.create_bucket(bucket)
    count = 20
    # Every line fails at OpenAI (500), and with no retries fails over to Anthropic.
    emulator_defaults(line_fail_rate=1.0)
    metadata = {"fallback": HAIKU, "max_retries": "0"}
    data = b"\n".join(neutral(i) for i in range(count))
    job_id, resource = pipeline.upload(
        "crash/failover.jsonl", data, metadata=metadata, bucket=bucket
    )
    before = {b["id"] for b in pipeline.anthropic_batches()}
    env = {**os.environ, **pipeline.stack.client_env(), "BATCHLINE_INPUT_BUCKET": bucket}
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_FAILOVER)
    with pipeline.ticker_paused():
        done = subprocess.run(
            [
                sys.executable,
                str(script),
                bucket,
                *(resource[k] for k in ("name", "generation", "size")),
                orjson.dumps(metadata).decode(),  # as the object's event carries it
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
        )
    assert done.returncode == 137, (done.stdout, done.stderr[-3000:])
    [created] = [b for b in pipeline.anthropic_batches() if b["id"] not in before]
    assert f"provider accepted {created['id']}" in done.stdout
    failover = [c for c in pipeline.store.get_chunks(job_id) if c.round_reason == "failover"]
    assert len(failover) == 1 and failover[0].batch_id is None  # Firestore never heard
    job = pipeline.wait(job_id, timeout=ROUNDS_WAIT_SECONDS)  # poll takes over
    assert job.state is JobState.SUCCEEDED
    assert [b["id"] for b in pipeline.anthropic_batches() if b["id"] not in before] == [
        created["id"]
    ]
    results = pipeline.results(job)
    assert [r["custom_id"] for r in results] == [f"q-{i}" for i in range(count)]
    assert {r["provider"] for r in results} == {"anthropic"}
    assert all(chain_of(r) == [("first", FIRST), ("failover", HAIKU)] for r in results)


def test_model_auto_sends_each_line_where_batchline_estimate_says(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    words = " ".join(f"word{i}" for i in range(75_000))  # ~150k tokens: past gpt-4o-mini's
    refused_by_gemini = {  # `if`/`then`: Gemini's responseJsonSchema has neither
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "if": {"required": ["a"]},
        "then": {"required": ["a"]},
    }
    lines = [
        {
            "custom_id": "doc",
            "model": "auto",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": f"Summarise: {words}"}],
        },
        {
            "custom_id": "schema",
            "model": "auto",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "Give a"}],
            "response_schema": {"name": "odd", "schema": refused_by_gemini},
        },
        *(
            {
                "custom_id": f"short-{i}",
                "model": "auto",
                "max_tokens": 20,
                "messages": [{"role": "user", "content": f"Say {i}"}],
            }
            for i in range(5)
        ),
    ]
    data = b"\n".join(orjson.dumps(line) for line in lines)
    path = tmp_path / "auto.jsonl"
    path.write_bytes(data)
    env = {**os.environ, **pipeline.stack.client_env()}
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "batchline"), "estimate", str(path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    expected = {a["model"]: a["requests"] for a in orjson.loads(shown.stdout)["auto"]}
    job_id, _ = pipeline.upload("e2e/auto.jsonl", data)
    job = pipeline.wait(job_id, timeout=ROUNDS_WAIT_SECONDS)
    results = pipeline.results(job)
    assert job.state is JobState.SUCCEEDED, [r["error"] for r in results]
    assert {r["selected_by"] for r in results} == {"auto"}
    chosen = Counter(f"{r['provider']}/{r['model']}" for r in results)
    assert dict(chosen) == expected
    by_id = {r["custom_id"]: f"{r['provider']}/{r['model']}" for r in results}
    assert by_id["doc"] != "openai/gpt-4o-mini"  # too long for its context window
    assert not by_id["schema"].startswith("vertex/")  # Gemini refuses `if`
    assert pipeline.summary(job)["estimate"]["auto"]
