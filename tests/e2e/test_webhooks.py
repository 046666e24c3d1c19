"""Webhooks on the whole local stack, both ways, with the scheduler's ticker stopped.

A file dropped with `notify_url` (the stack's receiver) is submitted; its OpenAI batch
ends at the emulator, which sends `batch.completed` to the api function; that asks poll
at once, poll hands the job to collect, collect ends it and publishes the webhook, and the
notify function POSTs it. No tick runs meanwhile, so the job can only have moved on the
webhook's account. The receiver answers the first delivery 500: Pub/Sub delivers it
again (with backoff), with the same webhook-id. Signatures are checked by the receiver
(openai SDK) and here (standardwebhooks).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
import requests
import standardwebhooks

from batchline.domain.webhooks import completed_webhook_id
from batchline_tools.local.stack import LOCAL_WEBHOOK_SECRET

from .conftest import WAIT_SECONDS, Pipeline
from .test_mixed_providers import openai_line

pytestmark = pytest.mark.e2e


@contextmanager
def ticker_stopped(pipeline: Pipeline) -> Iterator[None]:
    """The scheduler stand-in publishes no tick while the block runs (unlike
    `ticker_paused`, the poll subscription keeps pushing: what the api publishes on a
    webhook still reaches poll)."""
    pgid = pipeline.stack.components["ticker"].process.pgid
    os.killpg(pgid, signal.SIGSTOP)
    try:
        # A tick already pushed is handled at once, before the test's job exists.
        time.sleep(1.0)
        yield
    finally:
        os.killpg(pgid, signal.SIGCONT)


def receiver(pipeline: Pipeline, path: str, **body: Any) -> Any:
    url = f"{pipeline.stack.receiver_url}/_receiver/{path}"
    reply = requests.post(url, json=body, timeout=10) if body else requests.get(url, timeout=10)
    reply.raise_for_status()
    return reply.json()


def wait_for(what: str, found: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = found()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} after {WAIT_SECONDS:.0f} s"
        time.sleep(0.3)


def test_an_openai_webhook_advances_the_job_and_its_own_webhook_is_delivered_retried_and_signed(
    pipeline: Pipeline, emulator_defaults: Callable[..., None]
) -> None:
    emulator_defaults(hold_after_lines=None)
    receiver(pipeline, "reset", reset=True)
    receiver(pipeline, "config", answers=[500])
    data = b"".join(orjson.dumps(openai_line(f"Question {n}", f"q{n}")) + b"\n" for n in range(3))
    with ticker_stopped(pipeline):
        name = f"webhooks/{time.time_ns()}.jsonl"
        job_id, _ = pipeline.upload(
            name, data, metadata={"notify_url": f"{pipeline.stack.receiver_url}/hooks/batchline"}
        )

        def two_deliveries() -> list[dict[str, Any]] | None:
            got = [
                d
                for d in receiver(pipeline, "deliveries")["data"]
                if d["headers"].get("webhook-id") == completed_webhook_id(job_id)
            ]
            return got if len(got) >= 2 else None

        first, second = wait_for("two webhook deliveries", two_deliveries)[:2]
        job = pipeline.store.get_job(job_id)

    # The job ended with no tick: the api asked for the poll when OpenAI's webhook came.
    assert job is not None and job.state.value == "succeeded", job
    [chunk] = pipeline.store.get_chunks(job_id)
    assert chunk.webhook_ids, "the api did not act on the emulator's webhook"
    sent = requests.get(f"{pipeline.emulator}/_emulator/webhooks", timeout=10).json()["data"]
    ours = [w for w in sent if w["event"]["data"]["id"] == chunk.batch_id]
    assert [w["type"] for w in ours] == ["batch.completed"]
    assert ours[0]["delivered"] and ours[0]["webhook_id"] in chunk.webhook_ids
    api_log = pipeline.stack.log_path("api").read_text()
    assert any(
        "openai webhook: poll requested" in line and job_id in line for line in api_log.splitlines()
    )

    # Our webhook: refused once (500), delivered again by Pub/Sub, same id, same body.
    assert (first["status"], second["status"]) == (500, 200)
    assert first["body"] == second["body"]
    assert first["verified"] and second["verified"], (first["error"], second["error"])
    event = standardwebhooks.Webhook(LOCAL_WEBHOOK_SECRET).verify(second["body"], second["headers"])
    assert event["type"] == "job.completed"
    assert event["data"]["job_id"] == job_id and event["data"]["state"] == "succeeded"
    assert event["data"]["counts"]["succeeded"] == 3
    assert second["path"] == "/hooks/batchline"
    done = wait_for(
        "the delivery noted on the job",
        lambda: (j := pipeline.store.get_job(job_id)) and j.notify.get("delivered_at") and j,
    )
    assert done.notify["attempts"] == 2 and not done.notify_pending
