"""A running job's estimated finish: its first-round pace so far, extrapolated."""

from __future__ import annotations

from dataclasses import replace

import pytest

from batchline.domain.models import Chunk, ChunkState, Job, JobOptions, JobState, Source
from batchline.services.api.views import finish_estimate, job_view

NOW = 1_800_000_000.0


def job(state: JobState = JobState.RUNNING, submitted: float | None = NOW - 600) -> Job:
    return Job(
        "job-x",
        Source("b", "n", "1", 1),
        JobOptions(),
        "gs://o/",
        state=state,
        submitted_at=submitted,
    )


def chunk(index: int, requests: int, done: int, failed: int = 0, round_: int = 0) -> Chunk:
    return Chunk(
        "job-x",
        index,
        "openai",
        "m",
        requests,
        1,
        "p",
        "m",
        state=ChunkState.RUNNING,
        batch_counts={"completed": done, "failed": failed},
        round=round_,
    )


def test_the_rest_is_expected_at_the_pace_so_far() -> None:
    # 250 of 1,000 first answers in 10 minutes: the other 750 in 30 more.
    chunks = [chunk(0, 500, 200, 50), chunk(1, 500, 0), chunk(2, 40, 0, round_=1)]
    assert finish_estimate(job(), chunks, NOW) == pytest.approx(NOW + 1800)


@pytest.mark.parametrize(
    ("the_job", "chunks"),
    [
        (job(), [chunk(0, 500, 0)]),  # nothing answered yet: no pace to go by
        (job(submitted=None), [chunk(0, 500, 100)]),  # not submitted
        (job(JobState.COLLECTING), [chunk(0, 500, 500)]),
        (job(JobState.SUCCEEDED), [chunk(0, 500, 500)]),
    ],
)
def test_no_estimate_without_a_pace_or_once_the_answers_are_in(
    the_job: Job, chunks: list[Chunk]
) -> None:
    assert finish_estimate(the_job, chunks, NOW) is None


def test_the_job_view_shows_it_only_when_given() -> None:
    assert job_view(job())["estimated_finish_at"] is None
    assert job_view(job(), NOW + 60)["estimated_finish_at"] == NOW + 60
    over = [chunk(0, 10, 10, 5)]  # a provider that counts more than it holds
    assert finish_estimate(replace(job(), submitted_at=NOW - 10), over, NOW) == NOW
