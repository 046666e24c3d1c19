"""Admission control: a chunk's batch is created only once its room in its provider's quota
is held, across every job of the deployment, so the provider's queue is never overfilled.

Each quota is one pool (`quota_pools/{key}`, `domain.quotas.pool_key`): a Firestore
document changed only in transactions by the rules `claims.reserve` and
`claims.release_hold`. The steps, and what a crash right after each leaves:

1. `admit`, before the chunk's submit lease is taken: the chunk's hold (`job/index`,
   its cost in the quota's unit) is added when it fits and no other waiting job goes
   first; else the job is noted as waiting, and the reason comes back. Dying after it
   leaves the hold with the chunk still pending or submitting: the chunk's next
   submitter takes the same hold again (`reserve` keys it by chunk), never a second one.
   A chunk told to wait has its input uploaded meanwhile (`upload_ahead`), so that only
   the batch's create runs inside its hold.
2. `release`, once the chunk's batch has ended, or the chunk ends or goes back to
   pending without one (`dispatch`, `submitting.refused`). Dying before it leaves a hold
   whose chunk is not in flight: `sweep` frees it the next time the pool is found full.

Who goes first: the waiting job with the fewest chunks in the pool, then the one that
has waited longest, then the oldest (`claims.reserve`). A job asking afresh (its last
batch just ended) queues behind those already waiting, so a big job cannot take every
room its own batches free: a small job behind it waits for one of its batches at most. A job keeps its place while it asks again within
`quota_wait_seconds` (every poll tick that advances it asks); a job being canceled
gives its place up at once (`leave_queues`).
"""

from __future__ import annotations

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Ask, Change
from batchline.domain.models import Chunk, ChunkState, Job, QuotaPool, hold_key
from batchline.domain.quotas import Quota
from batchline.log import fields, get_logger
from batchline.services.leases import contended

log = get_logger(__name__)


def quota_of(deps: Deps, chunk: Chunk) -> Quota:
    """The quota `chunk` is held against."""
    return deps.settings.quotas.for_model(chunk.provider, chunk.model)


def admit(deps: Deps, job: Job, chunk: Chunk) -> str | None:
    """Hold `chunk`'s room in its quota pool: None once it is held (taken now, or earlier
    by a submitter of the same chunk), else why the chunk waits. A full pool is swept of
    holds whose chunks are no longer in flight, once, before the chunk is told to wait."""
    quota = quota_of(deps, chunk)
    ask = Ask(
        hold_key(chunk.job_id, chunk.index),
        job.job_id,
        job.created_at,
        quota.unit.cost(chunk),
        quota.limit,
        deps.settings.quota_wait_seconds,
    )
    for attempt in range(2):
        change = Change(claims.reserve, ask, deps.clock.now())
        pool = contended(deps.store.update_pool, quota.key, change)
        if pool is not None and ask.tag in pool.holds:
            return None
        if pool is None and change.left is None:
            return f"queued: {quota.key}'s pool is busy (many at once); asked again next tick"
        seen = change.seen or pool or QuotaPool(quota.key)
        fits = seen.in_use + ask.amount <= ask.limit or not seen.holds
        if fits or attempt or not sweep(deps, seen):
            break
    reason = quota.reason(seen.in_use)
    if fits:
        reason += "; other jobs go first"
    log.info("chunk waits for its quota", extra=_context(chunk, reason=reason))
    return reason


def release(deps: Deps, chunk: Chunk) -> None:
    """Free the room `chunk` holds (nothing if it holds none)."""
    key = quota_of(deps, chunk).key
    change = Change(claims.release_hold, hold_key(chunk.job_id, chunk.index))
    if contended(deps.store.update_pool, key, change) is not None:
        log.info("quota released", extra=_context(chunk, pool=key))


def leave_queues(deps: Deps, job_id: str, chunks: list[Chunk]) -> None:
    """A job being canceled gives up its place in the queues of the pools its pending
    chunks wait for, so that the jobs behind it go first now rather than once its wait
    runs out (`quota_wait_seconds`). Read before transact: only a pool that lists the job
    is written. Called before its pending chunks end: a crash in between leaves them
    pending, and the next tick does both again."""
    keys = sorted({quota_of(deps, c).key for c in chunks if c.state is ChunkState.PENDING})
    for key in keys:
        if job_id not in deps.store.get_pool(key).waiters:
            continue
        if contended(deps.store.update_pool, key, Change(claims.leave_queue, job_id)) is not None:
            log.info("left the quota queue: canceled", extra=fields(job_id=job_id, pool=key))


def sweep(deps: Deps, pool: QuotaPool) -> bool:
    """Free the holds of `pool` whose chunks are not in flight (ended, pending, gone):
    their releases died with their invocations. Only holds taken at least a lease ago are
    looked at (a newer one's submitter is at work), and each is freed only if it was not
    taken again since it was read. True when any was freed."""
    now = deps.clock.now()
    stale = {
        tag: hold
        for tag, hold in pool.holds.items()
        if hold.taken_at + deps.settings.lease_seconds <= now
    }
    states: dict[str, dict[int, ChunkState]] = {}
    freed = False
    for tag, hold in stale.items():
        job_id, _, index = tag.rpartition("/")
        if job_id not in states:
            states[job_id] = {c.index: c.state for c in deps.store.get_chunks(job_id)}
        state = states[job_id].get(int(index))
        if state in (ChunkState.SUBMITTING, ChunkState.RUNNING):
            continue
        change = Change(claims.release_hold, tag, hold.taken_at)
        if contended(deps.store.update_pool, pool.key, change) is not None:
            log.warning("freed a stale quota hold", extra=fields(pool=pool.key, hold=tag))
            freed = True
    return freed


def _context(chunk: Chunk, **more: object) -> dict[str, object]:
    return fields(job_id=chunk.job_id, chunk=chunk.index, **more)
