"""Moving one active job forward: plan, submit (or cancel), follow its batches, hand over
to collect.

Used by submit (right after planning) and by poll, for the job a message names (a
scheduler tick fans out one message per active job: `services/poll.py`); the running
chunks' provider status calls run several at once (`services/follow.py`). Safe to run
concurrently:
one invocation at a time advances a submitting or running job, under the job's lease
(`claims.take_for_advance`, renewed by a heartbeat). The others read the job first and,
finding the lease live, leave it without a transaction (duplicate triggers, ticks that
come while the job is at work); one that loses the race for the lease leaves it to the
winner rather than failing.
"""

from __future__ import annotations

from collections.abc import Callable

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change, LeaseState, LeaseTerms, Leave
from batchline.domain.models import ChunkState, Job, JobState
from batchline.log import fields, get_logger
from batchline.services import cancel, dispatch, follow, messages
from batchline.services.leases import Keeper, contended
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
        return _advance_held(deps, job, owner, deadline)
    if job.state is JobState.COLLECTING:
        return _ask_collect_again(deps, job)
    return job


def _ask_collect_again(deps: Deps, job: Job) -> Job:
    """The collect message may have been lost, its sender may have died before sending
    it, or its collect may have died: ask again once the last ask is old enough (read
    first: most ticks find it is not)."""
    settings = deps.settings
    rule = Change(
        claims.ask_collect_again,
        deps.clock.now(),
        settings.collect_retry_seconds,
        settings.lease_seconds,
    )
    if rule(job) is None:
        return job
    updated = contended(deps.store.update_job, job.job_id, rule)
    if updated is None:
        return job
    messages.request_collect(deps, updated)
    return updated


def _advance_held(deps: Deps, job: Job, owner: str, deadline: float) -> Job | None:
    """Advance the job's chunks under the job's lease, if it is free (or mine)."""
    now = deps.clock.now()
    if claims.lease_state(job.lease, owner, now) is LeaseState.HELD:
        return job  # another invocation advances it: nothing to add
    terms = LeaseTerms(deps.settings.lease_seconds)
    take = Change(claims.take_for_advance, owner, now, terms)
    taken = contended(deps.store.update_job, job.job_id, take)
    if taken is None:
        if take.left is not Leave.HELD:
            log.info("job not advanced", extra=fields(job_id=job.job_id, left=str(take.left)))
        return take.seen or job
    what = f"advancing {job.job_id}"
    try:
        with Keeper(deps, what, [_renewal(deps, job.job_id, owner)]) as keeper:
            return _advance_chunks(deps, taken, owner, deadline, keeper)
    finally:
        release = Change(claims.release_advance, owner, deps.clock.now())
        contended(deps.store.update_job, job.job_id, release)


def _renewal(deps: Deps, job_id: str, owner: str) -> Callable[[], bool]:
    def renew() -> bool:
        terms = LeaseTerms(deps.settings.lease_seconds)
        change = Change(claims.renew_advance, owner, deps.clock.now(), terms)
        return deps.store.update_job(job_id, change) is not None

    return renew


def _advance_chunks(
    deps: Deps, job: Job, owner: str, deadline: float, keeper: Keeper
) -> Job | None:
    chunks = deps.store.get_chunks(job.job_id)
    canceling = job.cancel_requested_at is not None
    if not canceling:  # the status calls, several at once
        chunks = follow.refresh_running(deps, chunks, deadline, keeper)
    for i, chunk in enumerate(chunks):
        if deps.clock.now() >= deadline or keeper.lost:
            break
        updated = None
        if canceling:
            updated = cancel.settle(deps, chunk, owner)
        elif claims.submit_due(chunk, owner, deps.clock.now()):
            updated = dispatch.dispatch(deps, chunk, owner)
        elif chunk.state is ChunkState.RUNNING:  # its batch's state just read (follow)
            updated = cancel.end_long_queue(deps, job, chunk)
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
