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

from .conftest import QUOTA_MODEL, QUOTA_TOKENS, Pipeline

pytestmark = pytest.mark.e2e


def lines(name: str, count: int) -> bytes:
    return b"\n".join(
        orjson.dumps(
            {
                "model": f"openai/{QUOTA_MODEL}",
                "custom_id": f"{name}-{i}",
                "messages": [{"role": "user", "content": f"Say something about {name}. #{i}"}],
            }
        )
        for i in range(count)
    )


def quota(pipeline: Pipeline) -> dict[str, Any]:
    reply = requests.get(f"{pipeline.emulator}/_emulator/quota", timeout=10)
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
    assert uses and 0 < max(uses) <= QUOTA_TOKENS, max(uses, default=None)
    assert quota(pipeline)["over_quota"] == failed_before  # none failed for the quota
    small_end, big_end = done[small].ended_at, done[big].ended_at
    assert small_end is not None and big_end is not None and small_end < big_end
