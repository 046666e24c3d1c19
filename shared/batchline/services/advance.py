"""Moving one active job forward: plan, submit (or cancel), follow its batches, hand over
to collect.

Used by submit (right after planning) and by poll, for the job a message names (a
scheduler tick fans out one message per active job: `services/poll.py`); the running
chunks' provider status calls run several at once (`services/follow.py`). Safe to run
concurrently:
one invocation at a time advances a submitting or running job, under the job's lease
(`claims.take_for_advance`, renewed by a heartbeat). The others read the job first and,
finding the lease live, leave it without a transaction (duplicate triggers, ticks); a
message with news (OpenAI's webhook: a batch ended) first asks its holder to go round
once more (`claims.ask_advance`, one write, none when it was asked already): the holder
gives the lease back only when nobody asked meanwhile (`claims.release_unless_asked`, in
the same transaction), so the ended batch is acted on at once, not at the next tick. One that loses the race for the lease leaves it to
the winner rather than failing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change, LeaseState, LeaseTerms, Leave
from batchline.domain.models import Chunk, ChunkState, Job, JobState
from batchline.log import fields, get_logger
from batchline.services import admission, cancel, dispatch, follow, messages, upload_ahead
from batchline.services.leases import Keeper, contended
from batchline.services.plan import plan_job

log = get_logger(__name__)


def advance_job(
    deps: Deps, job: Job, owner: str, deadline: float, *, ask_holder: bool = False
) -> Job | None:
    """Take `job` one step further as `owner` until `deadline`: plan it (unless a live
    planner holds it), submit, follow or cancel its chunks, or ask for its collect again.
    With `ask_holder` (the message brings news: a batch ended), a job found at work is
    asked to go round once more. Returns the job as this step left it, None when
    planning found nothing to do."""
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
        return _advance_held(deps, job, owner, deadline, ask_holder)
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


def _advance_held(
    deps: Deps, job: Job, owner: str, deadline: float, ask_holder: bool
) -> Job | None:
    """Advance the job's chunks under the job's lease, if it is free (or mine). Held by
    another invocation: leave it, after asking its holder to go round once more when
    there is news (`_ask_holder`)."""
    now = deps.clock.now()
    if claims.lease_state(job.lease, owner, now) is LeaseState.HELD and not (
        ask_holder and _ask_holder(deps, job, owner)
    ):
        return job
    terms = LeaseTerms(deps.settings.lease_seconds)
    take = Change(claims.take_for_advance, owner, now, terms)
    taken = contended(deps.store.update_job, job.job_id, take)
    if taken is None:
        if take.left is not Leave.HELD:
            log.info("job not advanced", extra=fields(job_id=job.job_id, left=str(take.left)))
        return take.seen or job
    what = f"advancing {job.job_id}"
    released = False
    try:
        with Keeper(deps, what, [_renewal(deps, job.job_id, owner)]) as keeper:
            while True:
                advanced = _advance_chunks(deps, taken, owner, deadline, keeper)
                if deps.clock.now() >= deadline or keeper.lost:
                    return advanced
                end = Change(claims.release_unless_asked, owner, deps.clock.now())
                again = contended(deps.store.update_job, job.job_id, end)
                if again is None or again.lease is None:
                    released = again is not None or end.left is not None
                    return advanced
                log.info("advancing again: asked while held", extra=fields(job_id=job.job_id))
                taken = again
    finally:
        if not released:
            release = Change(claims.release_advance, owner, deps.clock.now())
            contended(deps.store.update_job, job.job_id, release)


def _ask_holder(deps: Deps, job: Job, owner: str) -> bool:
    """Another invocation holds the job's lease: note that an advance was asked for, so
    that its holder goes round once more before giving the lease back (a batch that just
    ended, say an OpenAI webhook, is acted on now rather than at the next tick). True when
    the lease turned out to be free: the caller takes it."""
    if job.advance_asked_at is not None:
        return False  # asked already (read before transact): the holder goes round again
    ask = Change(claims.ask_advance, owner, deps.clock.now())
    contended(deps.store.update_job, job.job_id, ask)
    return ask.left is Leave.FREE


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
    waits: dict[str, str] = {}  # quota pool -> why this job's chunks wait for it
    if job.cancel_requested_at is None:  # the status calls, several at once
        chunks = follow.refresh_running(deps, chunks, deadline, keeper)
    else:  # the jobs queued behind it for room go first now
        admission.leave_queues(deps, job.job_id, chunks)
    for i, chunk in enumerate(chunks):
        if deps.clock.now() >= deadline or keeper.lost:
            break
        updated = _step(deps, job, chunk, owner, waits)
        if updated is not None:
            chunks[i] = updated
    upload_ahead.upload_waiting(deps, chunks, waits, deadline, keeper)  # while they wait
    job = _note_waiting(deps, job, waits)
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


def _step(deps: Deps, job: Job, chunk: Chunk, owner: str, waits: dict[str, str]) -> Chunk | None:
    """One chunk's part in this advance: cancel, submit once its quota admits it (a pool
    found full is not asked again for the job's later chunks), or give up a batch queued
    too long (its state was just read, `follow.refresh_running`)."""
    now = deps.clock.now()
    if job.cancel_requested_at is not None:
        return cancel.settle(deps, chunk, owner)
    if claims.submit_due(chunk, owner, now):
        pool = admission.quota_of(deps, chunk).key
        if pool in waits and chunk.state is ChunkState.PENDING:
            return None  # (a chunk taken over may hold its room already: it asks)
        reason = admission.admit(deps, job, chunk)
        if reason is not None:
            waits[pool] = reason
            return None
        return dispatch.dispatch(deps, chunk, owner)
    if chunk.state is ChunkState.PENDING and chunk.not_before is not None:
        pool = admission.quota_of(deps, chunk).key
        after = time.strftime("%H:%M:%S UTC", time.gmtime(chunk.not_before))
        waits.setdefault(
            pool, f"queued: the provider said {pool} was full; sent again after {after}"
        )
    elif chunk.state is ChunkState.RUNNING:  # its batch's state just read (follow)
        return cancel.end_long_queue(deps, job, chunk)
    return None


def _note_waiting(deps: Deps, job: Job, waits: dict[str, str]) -> Job:
    """Record on the job why its chunks wait (once it changed)."""
    reason = "; ".join(waits[k] for k in sorted(waits)) or None
    if reason == job.waiting:
        return job
    noted = contended(deps.store.update_job, job.job_id, Change(claims.note_waiting, reason))
    return noted or job
