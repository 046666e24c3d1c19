"""Moving one active job forward: plan, submit (or cancel), follow its batches, hand over
to collect.

Used by submit (right after planning) and by every poll tick; safe to run concurrently.
"""

from __future__ import annotations

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change
from batchline.domain.models import ChunkState, Job, JobState
from batchline.log import fields, get_logger
from batchline.services import cancel, dispatch, messages
from batchline.services.plan import plan_job

log = get_logger(__name__)


def advance_job(deps: Deps, job: Job, owner: str, deadline: float) -> Job | None:
    """Take `job` one step further as `owner` until `deadline`: plan it (unless a live
    planner holds it), submit, follow or cancel its chunks, or ask for its collect again.
    Returns the job as this step left it, None when planning found nothing to do."""
    now = deps.clock.now()
    if job.state is JobState.ACCEPTED:
        if claims.lease_state(job.lease, owner, now).live:
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
        updated = deps.store.update_job(job.job_id, Change(claims.ask_collect_again, now, retry))
        if updated is not None:
            messages.request_collect(deps, updated)
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
        elif claims.submit_due(chunk, owner, deps.clock.now()):
            updated = dispatch.dispatch(deps, chunk, owner)
        elif chunk.state is ChunkState.RUNNING:
            updated = dispatch.refresh(deps, chunk)
        if updated is not None:
            chunks[i] = updated
    now = deps.clock.now()
    if all(c.state is ChunkState.ENDED for c in chunks):
        collecting = deps.store.update_job(job.job_id, Change(claims.start_collecting, now))
        if collecting is not None:
            log.info("all batches ended", extra=fields(job_id=job.job_id))
            messages.request_collect(deps, collecting)
        return collecting
    if job.state is JobState.SUBMITTING and all(
        c.state in (ChunkState.RUNNING, ChunkState.ENDED) for c in chunks
    ):
        return deps.store.update_job(job.job_id, Change(claims.start_running, now))
    return job
