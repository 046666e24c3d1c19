"""Admission control against the Anthropic emulator's processing-queue limit (a create past
it is answered 429): with the quota configured, two jobs of twice the limit finish whole
and no create is refused. The services run on the real emulators (Firestore, GCS, the
Anthropic emulator), as in test_exactly_once."""

# ruff: noqa: F811 (the fixtures test_exactly_once defines, imported, are parameters here)
from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from batchline.bootstrap import Deps
from batchline.config import quota_policies
from batchline.domain.quotas import parse_quotas

from .conftest import _http_json
from .test_exactly_once import (  # noqa: F401 (fixtures)
    CHUNK,
    Stack,
    deps,
    planned_job,
    run_to_collect,
    stack,
)

pytestmark = pytest.mark.integration

#: Two chunks of CHUNK requests fit the queue at once.
LIMIT = 2 * CHUNK


def test_jobs_over_the_queue_limit_finish_and_no_create_is_refused(
    deps: Deps, stack: Stack
) -> None:
    before = stack.anthropic.admin({})
    quotas = parse_quotas(f'{{"anthropic": {{"queued_requests": {LIMIT}}}}}', quota_policies())
    admitted = replace(deps, settings=replace(deps.settings, quotas=quotas))
    url = f"{stack.anthropic.root_url}/_emulator/quota"
    refused_before = _http_json("GET", url)["over_quota"]
    stack.anthropic.admin({"queued_request_limit": LIMIT})
    uses: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            used: dict[str, Any] = _http_json("GET", url)["anthropic"]
            uses.append(int(used["queued_requests"]))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        jobs = [planned_job(admitted, tag, 4 * CHUNK) for tag in ("qa", "qb")]
        sampler.start()
        done = run_to_collect(admitted, jobs)
    finally:
        stop.set()
        sampler.join(5)
        stack.anthropic.admin({"queued_request_limit": before.get("queued_request_limit")})
    for job, tag in zip(done, ("qa", "qb"), strict=True):
        results = admitted.blobs.read_bytes(job.results_uri).splitlines()
        assert len(results) == 4 * CHUNK and b'"status":"succeeded"' in results[0]
        assert all(b'"succeeded"' in r for r in results), tag
    assert _http_json("GET", url)["over_quota"] == refused_before  # never a 429 for it
    assert uses and 0 < max(uses) <= LIMIT
    assert admitted.store.get_pool("anthropic").holds == {}
