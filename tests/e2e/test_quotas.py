"""Admission control through the whole local stack: jobs whose tokens are many times the
OpenAI emulator's enqueued-token limit all finish, the queue is never overfilled, and a
small job is not starved behind a big one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import requests

from batchline.domain.models import JobState

from .conftest import (
    ANTHROPIC_CHUNK_REQUESTS,
    QUOTA_MODEL,
    QUOTA_TOKENS,
    VERTEX_CHUNK_REQUESTS,
    VERTEX_QUOTA_JOBS,
    VERTEX_QUOTA_MODEL,
    Pipeline,
)

pytestmark = pytest.mark.e2e


def lines(name: str, count: int, model: str = f"openai/{QUOTA_MODEL}") -> bytes:
    return b"\n".join(
        orjson.dumps(
            {
                "model": model,
                "custom_id": f"{name}-{i}",
                "messages": [{"role": "user", "content": f"Say something about {name}. #{i}"}],
            }
        )
        for i in range(count)
    )


def quota(pipeline: Pipeline, provider: str = "openai") -> dict[str, Any]:
    reply = requests.get(f"{pipeline.emulator_url(provider)}/_emulator/quota", timeout=10)
    reply.raise_for_status()
    result: dict[str, Any] = reply.json()
    return result


def test_three_jobs_over_the_limit_finish_whole_and_the_small_one_is_not_starved(
    pipeline: Pipeline, emulator_defaults: Callable[..., None]
) -> None:
    emulator_defaults(enqueued_token_limit={QUOTA_MODEL: QUOTA_TOKENS})
    failed_before = quota(pipeline)["over_quota"]
    uses: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            model = quota(pipeline)["openai"].get(QUOTA_MODEL, {})
            uses.append(int(model.get("enqueued_tokens", 0)))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        big, _ = pipeline.upload("e2e/quota-big.jsonl", lines("big", 1200))
        medium, _ = pipeline.upload("e2e/quota-medium.jsonl", lines("medium", 300))
        time.sleep(1.0)  # the small job comes after the others are under way
        small, _ = pipeline.upload("e2e/quota-small.jsonl", lines("small", 20))
        done = {job_id: pipeline.wait(job_id, timeout=90) for job_id in (big, medium, small)}
    finally:
        stop.set()
        sampler.join(5)

    for job_id, (name, count) in zip(
        done, (("big", 1200), ("medium", 300), ("small", 20)), strict=True
    ):
        job = done[job_id]
        assert job.state is JobState.SUCCEEDED, job
        results = pipeline.results(job)
        assert [r["custom_id"] for r in results] == [f"{name}-{i}" for i in range(count)]
        assert {r["status"] for r in results} == {"succeeded"}
    assert len(pipeline.store.get_chunks(big)) >= 8  # cut to fit the quota
    # Chunks that waited for their quota had their input uploaded ahead, and their
    # batches were made from those uploads (services/upload_ahead.py).
    ahead = [c for c in pipeline.store.get_chunks(big) if c.uploaded_input]
    assert ahead, "no chunk of the big job was uploaded ahead"
    for chunk in ahead:
        reply = requests.get(
            f"{pipeline.emulator_url('openai')}/v1/batches/{chunk.batch_id}",
            headers={"Authorization": "Bearer sk-e2e"},
            timeout=10,
        )
        reply.raise_for_status()
        assert reply.json()["input_file_id"] == chunk.uploaded_input, chunk
    assert uses and 0 < max(uses) <= QUOTA_TOKENS, max(uses, default=None)
    assert quota(pipeline)["over_quota"] == failed_before  # none failed for the quota
    # Not starved: the small job's chunk went out while the big one still had chunks
    # waiting for room (its end may still come after the big one's: both are collected
    # as their last batches end, which a busy machine can order either way).
    [small_chunk] = pipeline.store.get_chunks(small)
    big_starts = [c.submit_started_at or 0.0 for c in pipeline.store.get_chunks(big)]
    assert small_chunk.submit_started_at is not None
    assert small_chunk.submit_started_at < max(big_starts), (small_chunk, sorted(big_starts))


class Sampler:
    """Samples a provider emulator's quota use of one model (None: the provider's one
    pool, Anthropic's) while the block runs."""

    def __init__(self, pipeline: Pipeline, provider: str, model: str | None, unit: str) -> None:
        self.uses: list[int] = []
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                pools = quota(pipeline, provider)[provider]
                used = pools if model is None else pools.get(model, {})
                self.uses.append(int(used.get(unit, 0)))
                time.sleep(0.1)

        self._thread = threading.Thread(target=sample, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def check_whole(pipeline: Pipeline, job_id: str, name: str, count: int) -> None:
    job = pipeline.wait(job_id, timeout=90)
    assert job.state is JobState.SUCCEEDED, job
    results = pipeline.results(job)
    assert [r["custom_id"] for r in results] == [f"{name}-{i}" for i in range(count)]
    assert {r["status"] for r in results} == {"succeeded"}


def test_vertex_jobs_stay_under_the_concurrent_job_limit_or_back_off_when_refused(
    pipeline: Pipeline, vertex_defaults: Callable[..., None]
) -> None:
    """gemini-2.5-flash-lite: the quota is set (2 jobs), so none is refused; gemini-2.0-flash-001:
    the quota is set too high (1000 jobs against the emulator's 1), so creates are refused
    with 429 RESOURCE_EXHAUSTED, and the chunks wait and go again, losing nothing."""
    other = "gemini-2.0-flash-001"
    vertex_defaults(concurrent_job_limit={VERTEX_QUOTA_MODEL: VERTEX_QUOTA_JOBS, other: 1})
    refused_before = quota(pipeline, "vertex")["over_quota"]
    count = 3 * VERTEX_CHUNK_REQUESTS  # three chunks a job
    with Sampler(pipeline, "vertex", VERTEX_QUOTA_MODEL, "concurrent_jobs") as sampler:
        kept, _ = pipeline.upload(
            "e2e/quota-vertex.jsonl", lines("v", count, f"vertex/{VERTEX_QUOTA_MODEL}")
        )
        kept_too, _ = pipeline.upload(
            "e2e/quota-vertex-2.jsonl", lines("w", count, f"vertex/{VERTEX_QUOTA_MODEL}")
        )
        check_whole(pipeline, kept, "v", count)
        check_whole(pipeline, kept_too, "w", count)
    assert 0 < max(sampler.uses) <= VERTEX_QUOTA_JOBS, sampler.uses
    assert quota(pipeline, "vertex")["over_quota"] == refused_before  # none refused

    refused, _ = pipeline.upload(
        "e2e/quota-vertex-refused.jsonl", lines("r", count, f"vertex/{other}")
    )
    check_whole(pipeline, refused, "r", count)
    assert quota(pipeline, "vertex")["over_quota"] > refused_before  # it was refused, and waited
    chunks = pipeline.store.get_chunks(refused)
    assert sum(c.requeues for c in chunks) >= 1


def test_anthropic_creates_refused_for_a_full_queue_wait_and_lose_nothing(
    pipeline: Pipeline, anthropic_defaults: Callable[..., None]
) -> None:
    """The deployment's Anthropic quota (100,000 requests by default) is higher than the
    account's (the emulator's queue: two chunks' worth): creates are answered 429
    `rate_limit_error` with a `retry-after`, and the chunks wait that long and go again,
    outside the create lock, until every line is back once."""
    limit = 2 * ANTHROPIC_CHUNK_REQUESTS
    # Batches of a chunk last ~2 s, so that the queue is full while the later ones ask.
    anthropic_defaults(queued_request_limit=limit, start_seconds=0.5, lines_per_second=200)
    refused_before = quota(pipeline, "anthropic")["over_quota"]
    model = "anthropic/claude-haiku-4-5"
    jobs = [("a-big", 5 * ANTHROPIC_CHUNK_REQUESTS), ("a-medium", 600), ("a-small", 20)]
    with Sampler(pipeline, "anthropic", None, "queued_requests") as sampler:
        uploaded = {
            name: pipeline.upload(f"e2e/quota-{name}.jsonl", lines(name, count, model))[0]
            for name, count in jobs
        }
        for name, count in jobs:
            check_whole(pipeline, uploaded[name], name, count)
    assert 0 < max(sampler.uses) <= limit, sampler.uses
    assert quota(pipeline, "anthropic")["over_quota"] > refused_before  # it did say no
    chunks = [c for job_id in uploaded.values() for c in pipeline.store.get_chunks(job_id)]
    assert sum(c.requeues for c in chunks) >= 1
