"""Admission control through the functions (functions-framework's test clients) against
the real emulators: the OpenAI emulator enforcing an enqueued-token limit as OpenAI does
(a batch over it is created, then fails with `token_limit_exceeded`), Firestore holding
the quota pools."""

# ruff: noqa: F811 (the fixtures test_functions defines, imported, are parameters here)
from __future__ import annotations

import json
import time
from typing import Any

import pytest

from batchline import bootstrap
from batchline.domain.ids import job_id_for_object
from batchline.domain.models import Job, JobState

from .conftest import _http_json
from .test_functions import (  # noqa: F401 (fixtures)
    Cloud,
    Functions,
    cloud,
    collect_push,
    deliver_storage_event,
    fresh,
    functions,
    jsonl,
    poll_tick,
    results_of,
    storage_event,
    unique,
)

pytestmark = pytest.mark.integration

MODEL_ID = "gpt-4.1-mini"
#: Two of the test's chunks (2 requests each, ~12 estimated tokens a request) fit at once.
LIMIT = 50


@pytest.fixture
def quotas(monkeypatch: pytest.MonkeyPatch) -> None:
    """The functions hold gpt-4.1-mini to LIMIT enqueued tokens and back off 1 s."""
    monkeypatch.setenv(
        "BATCHLINE_QUOTAS", json.dumps({f"openai/{MODEL_ID}": {"enqueued_tokens": LIMIT}})
    )
    monkeypatch.setenv("BATCHLINE_QUOTA_BACKOFF_SECONDS", "1")
    monkeypatch.setattr(bootstrap, "_deps", None)


def quota_use(cloud: Cloud) -> dict[str, Any]:
    result: dict[str, Any] = _http_json("GET", f"{cloud.openai.root_url}/_emulator/quota")
    return result


def submit(functions: Functions, cloud: Cloud, lines: int) -> str:
    resource = cloud.upload(unique("quota/in.jsonl"), jsonl(lines))
    assert deliver_storage_event(functions, storage_event(resource)) == 200
    return job_id_for_object(cloud.input_bucket, resource["name"], resource["generation"])


def run_all(
    functions: Functions, cloud: Cloud, job_ids: list[str], timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Poll ticks until every job is collecting, sampling the emulator's quota use between
    them; then collect each. Returns the samples."""
    samples = []
    deadline = time.monotonic() + timeout
    while True:
        samples.append(quota_use(cloud))
        assert poll_tick(functions, cloud) == 200
        jobs = [cloud.job(j) for j in job_ids]
        if all(j is not None and j.state is JobState.COLLECTING for j in jobs):
            break
        assert time.monotonic() < deadline, f"not all collecting after {timeout} s: {jobs}"
        time.sleep(0.2)
    while messages := cloud.pull("collect", settle=0.3):  # job messages, then their chunks'
        for message in messages:
            assert collect_push(functions, cloud, message) == 200
    return samples


def ended(cloud: Cloud, job_id: str) -> Job:
    job = cloud.job(job_id)
    assert job is not None and job.state.terminal, job
    return job


def test_jobs_over_the_limit_all_finish_without_overfilling_the_queue(
    functions: Functions, cloud: Cloud, quotas: None
) -> None:
    # Slow enough that batches overlap the ticks: a 2-line batch runs ~0.7 s.
    cloud.openai.admin({"enqueued_token_limit": {MODEL_ID: LIMIT}, "lines_per_second": 3.0})
    first, second = submit(functions, cloud, 7), submit(functions, cloud, 5)
    waiting = cloud.job(second)
    assert waiting is not None and waiting.waiting is not None  # no room left for it
    assert f"enqueued tokens in use for openai/{MODEL_ID}" in waiting.waiting
    samples = run_all(functions, cloud, [first, second])

    uses = [s["openai"].get(MODEL_ID, {}).get("enqueued_tokens", 0) for s in samples]
    assert max(uses) <= LIMIT and max(uses) > 0, uses
    assert quota_use(cloud)["over_quota"] == 0  # no batch failed with token_limit_exceeded
    statuses = {b["status"] for b in cloud.emulator_batches(first) + cloud.emulator_batches(second)}
    assert statuses == {"completed"}
    for job_id, lines in ((first, 7), (second, 5)):
        job = ended(cloud, job_id)
        assert job.state is JobState.SUCCEEDED
        results = results_of(cloud, job)
        assert [r["custom_id"] for r in results] == [f"req-{i}" for i in range(lines)]
        assert {r["status"] for r in results} == {"succeeded"}
    pool = cloud.store.get_pool(f"openai/{MODEL_ID}")
    assert pool.holds == {}  # every hold given back


def test_a_batch_failed_for_the_quota_is_sent_again_and_no_line_fails(
    functions: Functions, cloud: Cloud, quotas: None
) -> None:
    cloud.openai.admin({"quota_exceeded_next": 1})  # the quota is smaller than we think
    job_id = submit(functions, cloud, 3)
    run_all(functions, cloud, [job_id])

    job = ended(cloud, job_id)
    assert job.state is JobState.SUCCEEDED
    assert [r["status"] for r in results_of(cloud, job)] == ["succeeded"] * 3
    batches = cloud.emulator_batches(job_id)
    failed = [b for b in batches if b["status"] == "failed"]
    assert [b["errors"]["data"][0]["code"] for b in failed] == ["token_limit_exceeded"]
    chunks = cloud.store.get_chunks(job_id)
    refused = [c for c in chunks if c.quota_refused]
    assert [c.quota_refused for c in refused] == [[failed[0]["id"]]]
    assert refused[0].batch_id != failed[0]["id"] and refused[0].requeues == 1
