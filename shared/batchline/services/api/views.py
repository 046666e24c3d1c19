"""The public shape of a job: what the API and the CLI show (no leases, no internals).
Plain dicts, so that the CLI shows jobs without importing pydantic; `models.JobView`
describes the same shape for the API."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from batchline.domain.models import Job, JobOptions


def job_view(job: Job) -> dict[str, Any]:
    """The public shape of a job (no leases, no internals)."""
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
        "waiting": job.waiting if job.state.value in ("submitting", "running") else None,
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
