"""`batchline cancel` through the whole local stack: the CLI records the wish, the ticker's
poll cancels each provider's batch, collect writes every line and ends the job canceled."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import orjson
import pytest

from batchline.domain.models import ChunkState, JobState

from .conftest import Pipeline
from .test_make import batchline, run
from .test_mixed_providers import anthropic_line, openai_line
from .test_vertex import vertex_line

pytestmark = pytest.mark.e2e

PER_PROVIDER = 10
#: Each provider's batch answers this many lines, then waits (held by its emulator) until
#: released: the cancel finds exactly that many answers in, whatever this machine's speed.
ANSWERED_BEFORE_CANCEL = 3


def test_cancel_keeps_the_answers_in_and_cancels_the_rest_on_every_provider(
    pipeline: Pipeline, all_emulator_defaults: Callable[..., None]
) -> None:
    all_emulator_defaults(hold_after_lines=ANSWERED_BEFORE_CANCEL)
    makers = {"openai": openai_line, "anthropic": anthropic_line, "vertex": vertex_line}
    lines = [
        makers[provider](f"Question {n}", f"{provider}-{n}")
        for n in range(PER_PROVIDER)
        for provider in makers
    ]
    data = b"".join(orjson.dumps(x) + b"\n" for x in lines) + b"{not json\n"
    job_id, _ = pipeline.upload("cancel/three-providers.jsonl", data)
    chunks = pipeline.wait_held(job_id)
    assert sorted(c.provider for c in chunks) == sorted(makers)
    assert all(c.state is ChunkState.RUNNING for c in chunks), chunks

    cancel = run(
        [batchline(), "cancel", job_id, "--wait", "--json", "--timeout", "150"],
        pipeline.stack.run_dir,
        timeout=180,
    )
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    view = json.loads(cancel.stdout)
    assert view["state"] == "canceled" and view["cancel_requested_at"]

    job = pipeline.wait(job_id)
    assert job.state is JobState.CANCELED
    results = pipeline.results(job)
    assert [r["line"] for r in results] == list(range(1, len(lines) + 2))
    assert results[-1]["status"] == "invalid"
    by_provider: dict[str, Counter[str]] = {}
    for r in results[:-1]:
        assert r["custom_id"].startswith(r["provider"])
        by_provider.setdefault(r["provider"], Counter())[r["status"]] += 1
    for provider, statuses in by_provider.items():
        # Answers that came back before the cancel are kept; the rest are canceled.
        assert statuses == {
            "succeeded": ANSWERED_BEFORE_CANCEL,
            "canceled": PER_PROVIDER - ANSWERED_BEFORE_CANCEL,
        }, (provider, statuses)
    assert job.counts["canceled"] == 3 * (PER_PROVIDER - ANSWERED_BEFORE_CANCEL)
    batches = pipeline.summary(job)["provider_batches"]
    assert {b["state"] for b in batches} == {"canceled"}

    again = run([batchline(), "cancel", job_id, "--json"], pipeline.stack.run_dir)
    assert again.returncode == 0 and json.loads(again.stdout)["state"] == "canceled"
