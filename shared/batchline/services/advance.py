"""Moving one active job forward: plan, submit (or cancel), follow its batches, hand over
to collect.

Used by submit (right after planning) and by every poll tick; safe to run concurrently.
"""

from __future__ import annotations

from dataclasses import replace

from batchline.bootstrap import Deps
from batchline.domain.models import ChunkState, Job, JobState
from batchline.log import fields, get_logger
from batchline.services import cancel, dispatch, reporting
from batchline.services.plan import plan_job

log = get_logger(__name__)


def advance_job(deps: Deps, job: Job, owner: str, deadline: float) -> Job | None:
    now = deps.clock.now()
    if job.state is JobState.ACCEPTED:
        if job.lease is not None and job.lease.until > now:
            return job  # a live planner holds it
        log.info("planning in poll", extra=fields(job_id=job.job_id))
        planned = plan_job(deps, job.job_id, owner)
        if planned is None:
            return None
        job = planned  # and go on submitting in this same tick
    if job.state in (JobState.SUBMITTING, JobState.RUNNING):
        return _advance_chunks(deps, job, owner, deadline)
    if job.state is JobState.COLLECTING:
        # The collect message may have been lost (crash after the state change, or a
        # collect that died): ask again once the last request is old enough.
        retry = deps.settings.collect_retry_seconds

        def restamp(current: Job) -> Job | None:
            if current.state is not JobState.COLLECTING:
                return None
            if (current.collect_requested_at or 0) + retry > now:
                return None
            return replace(current, collect_requested_at=now, updated_at=now)

        updated = deps.store.update_job(job.job_id, restamp)
        if updated is not None:
            reporting.request_collect(deps, updated)
            return updated
    return job


def _advance_chunks(deps: Deps, job: Job, owner: str, deadline: float) -> Job | None:
    chunks = deps.store.get_chunks(job.job_id)
    canceling = job.cancel_requested_at is not None
    for i, chunk in enumerate(chunks):
        if deps.clock.now() >= deadline:
            break
        updated = None
        if canceling:
            updated = cancel.settle(deps, chunk, owner)
        elif dispatch.needs_submit(chunk, deps.clock.now()):
            updated = dispatch.dispatch(deps, chunk, owner)
        elif chunk.state is ChunkState.RUNNING:
            updated = dispatch.refresh(deps, chunk)
        if updated is not None:
            chunks[i] = updated
    now = deps.clock.now()
    if all(c.state is ChunkState.ENDED for c in chunks):

        def to_collect(current: Job) -> Job | None:
            if current.state not in (JobState.SUBMITTING, JobState.RUNNING):
                return None
            return current.to(
                JobState.COLLECTING,
                now,
                submitted_at=current.submitted_at or now,
                collect_requested_at=now,
            )

        collecting = deps.store.update_job(job.job_id, to_collect)
        if collecting is not None:
            log.info("all batches ended", extra=fields(job_id=job.job_id))
            reporting.request_collect(deps, collecting)
        return collecting
    if job.state is JobState.SUBMITTING and all(
        c.state in (ChunkState.RUNNING, ChunkState.ENDED) for c in chunks
    ):
        return deps.store.update_job(
            job.job_id,
            lambda j: (
                j.to(JobState.RUNNING, now, submitted_at=now)
                if j.state is JobState.SUBMITTING
                else None
            ),
        )
    return job
