"""Getting chunks to their provider exactly once, and following them until they end.

A chunk is leased in a transaction before its batch is created, and the lease is renewed
by a heartbeat while the holder works (`leases.Keeper`), so a live holder is never taken
over and a dead one is within `lease_seconds`. If the holder dies between the provider
accepting the batch and Firestore recording it, the chunk's next taker finds that batch
and adopts it, and submits again only when there is none:

- OpenAI and Vertex AI batches carry the chunk's tag (metadata, labels): the batch is
  found by its tag (`reconcile`); at most one carries it.
- Anthropic batches carry nothing, so every Anthropic create goes through the
  deployment's create lock (`create_lock.py`, where the argument is): the batch a dead
  holder made is the one listed after the mark its intent recorded, adopted for the
  chunk the intent names by whoever takes the lock next.

Either way the first record wins (`claims.record_batch`): a submit that outlived its
lease and loses that race cancels its own batch unless the winner adopted it
(`submitting.withdraw`). A record that fails after the provider accepted the batch is retried with
backoff before the holder gives up (its lease then runs out, and the batch is adopted).
"""

from __future__ import annotations

from collections.abc import Callable

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change, LeaseTerms
from batchline.domain.models import BatchTag, Chunk, ChunkState, ProviderBatch
from batchline.domain.providers.registry import provider as provider_of
from batchline.errors import ProviderError
from batchline.log import get_logger
from batchline.ports import ProviderClient
from batchline.services import admission
from batchline.services.create_lock import CreateLock
from batchline.services.leases import Keeper, LeaseLost
from batchline.services.submitting import (
    GiveBack,
    backoff_until,
    context,
    create,
    record,
    refused,
    settle,
)

log = get_logger(__name__)

# Provider clocks and ours differ; look a little further back than the lease says.
CLOCK_SKEW_SECONDS = 120.0


def dispatch(deps: Deps, chunk: Chunk, owner: str, *, send_new: bool = True) -> Chunk | None:
    """Submit `chunk` unless another invocation holds it; returns the updated chunk.

    With `send_new=False` (its job is being canceled) nothing new is submitted: the
    batch an earlier attempt created is adopted if it can be found, else the chunk ends
    unsubmitted, its lines canceled. A chunk waiting for its provider's create lock is
    left as it is (None).
    """
    provider = deps.providers.get(chunk.provider)
    lock = CreateLock.of(deps, provider, owner)
    if lock is not None and lock.busy():
        return None  # another create is in flight: read before transact, try next tick
    now = deps.clock.now()
    take = Change(claims.take_for_submit, owner, now, LeaseTerms(deps.settings.lease_seconds))
    leased = deps.store.update_chunk(chunk.job_id, chunk.index, take)
    if leased is None:
        return None
    what = f"submitting chunk {leased.index} of {leased.job_id}"
    try:
        with Keeper(deps, what, [_renewal(deps, leased, owner)]) as keeper:
            if lock is None:
                ended = _lease_ended(take.seen, now)
                sent = _send_tagged(deps, provider, leased, owner, ended, send_new, keeper)
            else:
                keeper.add(lock.renew)
                sent = _send_locked(deps, provider, leased, owner, lock, send_new, keeper)
        if sent is not None and sent.state in (ChunkState.ENDED, ChunkState.PENDING):
            admission.release(deps, sent)  # no batch of its holds room (a crash: `sweep`)
        return sent
    except LeaseLost:
        # Nothing was created since the lease was lost: give back what is still mine.
        log.warning("lost a lease; stopped before creating", extra=context(leased))
        _give_back(deps, leased, owner)
        return None
    except GiveBack as back:  # the heartbeat has stopped: no renewal lands after this
        _give_back(deps, leased, owner)
        if back.error is not None:
            raise back.error from None
        return None


def _give_back(deps: Deps, chunk: Chunk, owner: str) -> None:
    """End my submit lease now, so that the next attempt (which reconciles first) need
    not wait for it to run out; called only once the heartbeat has stopped."""
    settle(deps, chunk, Change(claims.release_submit, owner, deps.clock.now()))


def _renewal(deps: Deps, chunk: Chunk, owner: str) -> Callable[[], bool]:
    def renew() -> bool:
        terms = LeaseTerms(deps.settings.lease_seconds)
        change = Change(claims.renew_submit, owner, deps.clock.now(), terms)
        return deps.store.update_chunk(chunk.job_id, chunk.index, change) is not None

    return renew


def _send_tagged(
    deps: Deps,
    provider: ProviderClient,
    leased: Chunk,
    owner: str,
    lease_ended: float,
    send_new: bool,
    keeper: Keeper,
) -> Chunk | None:
    try:
        batch = None
        if leased.attempts > 1:
            batch = reconcile(deps, provider, leased, lease_ended)
        if batch is None and not send_new:
            return settle(deps, leased, Change(claims.end_unsubmitted, owner, deps.clock.now()))
        if batch is None:
            keeper.check()
            batch = create(deps, provider, leased)
    except ProviderError as exc:
        return refused(deps, leased, owner, exc)
    return record(deps, provider, leased, batch)


def _send_locked(
    deps: Deps,
    provider: ProviderClient,
    leased: Chunk,
    owner: str,
    lock: CreateLock,
    send_new: bool,
    keeper: Keeper,
) -> Chunk | None:
    """Under the provider's create lock: settle what a dead holder left, then create.
    The lock is given back at the end unless an intent is left open (`CreateLock`)."""
    if not lock.take():
        raise GiveBack()  # another create is in flight: this chunk waits its turn
    try:
        return _create_locked(deps, provider, leased, owner, lock, send_new, keeper)
    except ProviderError as exc:
        return refused(deps, leased, owner, exc)
    finally:
        lock.release()


def _create_locked(
    deps: Deps,
    provider: ProviderClient,
    leased: Chunk,
    owner: str,
    lock: CreateLock,
    send_new: bool,
    keeper: Keeper,
) -> Chunk | None:
    tag = BatchTag(leased.job_id, leased.index)
    left = lock.open
    if left is not None:
        current = lock.settle(left)
        if left.tag == tag and (current is None or current.state is not ChunkState.SUBMITTING):
            return current  # its batch was adopted (or the chunk settled otherwise)
    if not send_new:
        return settle(deps, leased, Change(claims.end_unsubmitted, owner, deps.clock.now()))
    keeper.check()
    if lock.declare(leased) is None:
        raise LeaseLost(f"{tag}: create lock lost")
    keeper.check()
    try:
        batch = create(deps, provider, leased)
    except ProviderError as exc:
        if exc.status is not None and (exc.status < 500 or exc.status == 529):
            lock.accounted()  # the provider answered, and made no batch
        # Otherwise a batch may exist, or yet appear: the intent stays open, and the
        # lock's next holder settles it once this holder's lease has run out.
        raise
    recorded = record(deps, provider, leased, batch)
    lock.accounted()
    return recorded


def _lease_ended(taken_over: Chunk | None, now: float) -> float:
    """Where the earlier attempts' window ends: when the lease we took over ran out."""
    lease = taken_over.lease if taken_over is not None else None
    return lease.until if lease is not None else now


def reconcile(
    deps: Deps, provider: ProviderClient, chunk: Chunk, lease_ended: float
) -> ProviderBatch | None:
    """The batch an earlier attempt at `chunk` created, found by its tag (OpenAI metadata,
    Vertex labels: at most one carries it); None: submit again. The search looks at the
    batches created from the first attempt's start to the end of the expired lease,
    widened by the clock skew."""
    tag = BatchTag(chunk.job_id, chunk.index)
    since = (chunk.submit_started_at or lease_ended) - CLOCK_SKEW_SECONDS
    until = lease_ended + CLOCK_SKEW_SECONDS
    candidates = provider.find_batches(tag, since, until, chunk.request_count)
    ours = [
        b
        for b in candidates
        if b.batch_id not in chunk.quota_refused
        and deps.store.batch_recorded_by(b.batch_id) in (None, tag)
    ]
    if len(ours) == 1:
        log.info("adopted batch", extra=context(chunk, batch_id=ours[0].batch_id))
        return ours[0]
    if ours:
        log.warning(
            "several batches carry the chunk's tag; submitting again",
            extra=context(chunk, batch_ids=[b.batch_id for b in ours]),
        )
    return None


def refresh(deps: Deps, chunk: Chunk) -> Chunk | None:
    """Ask the provider how a running chunk's batch is doing; record it."""
    if chunk.state is not ChunkState.RUNNING or chunk.batch_id is None:
        return None
    batch = deps.providers.get(chunk.provider).get_batch(chunk.batch_id)
    if batch.state == chunk.batch_state and batch.counts == chunk.batch_counts:
        return chunk
    now = deps.clock.now()
    if provider_of(chunk.provider).quota.failed_for_quota(batch):
        # Created, then refused for the quota: nothing ran; the chunk waits and goes again.
        log.warning("batch failed for its quota; sent again later", extra=context(chunk))
        change = Change(claims.requeue_failed, batch, now, backoff_until(deps, chunk, now))
    else:
        change = Change(claims.follow_batch, batch, now)
    updated = settle(deps, chunk, change)
    if updated is not None and updated.state is not ChunkState.RUNNING:
        admission.release(deps, updated)  # its batch has ended (a crash here: `sweep`)
    return updated
