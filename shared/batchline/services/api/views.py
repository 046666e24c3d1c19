"""The public shape of a job: what the API and the CLI show (no leases, no internals).
Plain dicts, so that the CLI shows jobs without importing pydantic; `models.JobView`
describes the same shape for the API."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from batchline.domain.models import Chunk, Job, JobOptions, JobState
from batchline.ports import JobStore

#: The states in which a job's chunks are at its providers: it may wait, and has a pace.
_UNDER_WAY = (JobState.SUBMITTING, JobState.RUNNING)


def job_view(job: Job, estimated_finish_at: float | None = None) -> dict[str, Any]:
    """The public shape of a job (no leases, no internals); `estimated_finish_at` when
    one was worked out (`finish_estimate`: a view of one job reads its chunks)."""
    return {
        "job_id": job.job_id,
        "state": str(job.state),
        "origin": job.origin,
        "source": job.source.uri,
        "options": options_view(job.options),
        "counts": job.counts,
        "chunks": job.chunk_count,
        "usage": job.usage,
        "cost_usd": job.cost_usd,
        "results_uri": job.results_uri
        if job.state.terminal and job.state.value != "rejected"
        else None,
        "summary_uri": job.summary_uri if job.state.terminal else None,
        "error": job.error,
        "waiting": job.waiting if job.state in _UNDER_WAY else None,
        "estimated_finish_at": estimated_finish_at,
        "created_at": job.created_at,
        "cancel_requested_at": job.cancel_requested_at,
        "ended_at": job.ended_at,
    }


def options_view(options: JobOptions) -> dict[str, Any]:
    """Model and labels always; the other options when set."""
    view: dict[str, Any] = {"model": options.model, "labels": options.labels}
    for name, value in asdict(options).items():
        if name not in view and value not in (None, ()):
            view[name] = list(value) if isinstance(value, tuple) else value
    return view


def job_finish(store: JobStore, job: Job, now: float) -> float | None:
    """`finish_estimate` of `job`, its chunks read only while it is under way."""
    if job.state not in _UNDER_WAY:
        return None
    return finish_estimate(job, store.get_chunks(job.job_id), now)


def finish_estimate(job: Job, chunks: list[Chunk], now: float) -> float | None:
    """When `job` should have every first answer, extrapolating its pace so far: the
    lines its first-round batches answered since it was submitted, the same pace for the
    rest (quota waits included, as they happened). None until a line is answered, and
    for a job not submitting or running. Follow-up rounds and collect come after it."""
    if job.state not in _UNDER_WAY or job.submitted_at is None:
        return None
    first = [c for c in chunks if not c.round]
    total = sum(c.request_count for c in first)
    answered = sum(
        min(
            int(c.batch_counts.get("completed", 0)) + int(c.batch_counts.get("failed", 0)),
            c.request_count,
        )
        for c in first
    )
    elapsed = now - job.submitted_at
    if answered <= 0 or elapsed <= 0:
        return None
    return now + (total - answered) * elapsed / answered
