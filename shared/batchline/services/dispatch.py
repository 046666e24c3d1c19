"""Getting chunks to their provider exactly once, and following them until they end.

A chunk is leased in a transaction before its batch is created; the lease records the
submit intent: when the first attempt started (`submit_started_at`), until when the
holder may act (`lease.until`) and how many requests it sends (`request_count`). If the
holder dies between the provider accepting the batch and Firestore recording it, the lease
expires; whoever takes it over first looks for that batch at the provider and adopts it
(`reconcile`), and submits again only when it cannot be found.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from batchline.bootstrap import Deps
from batchline.domain.models import (
    BatchState,
    BatchTag,
    Chunk,
    ChunkState,
    Lease,
    ProviderBatch,
)
from batchline.errors import ProviderError
from batchline.log import fields, get_logger
from batchline.ports import ProviderClient, StagedPayload

log = get_logger(__name__)

# Provider clocks and ours differ; look a little further back than the lease says.
CLOCK_SKEW_SECONDS = 120.0


def needs_submit(chunk: Chunk, now: float) -> bool:
    if chunk.state is ChunkState.PENDING:
        return True
    return chunk.state is ChunkState.SUBMITTING and (
        chunk.lease is None or chunk.lease.until <= now
    )


def dispatch(deps: Deps, chunk: Chunk, owner: str, *, submit_new: bool = True) -> Chunk | None:
    """Submit `chunk` unless another invocation holds it; returns the updated chunk.

    With `submit_new=False` (its job is being canceled) nothing new is submitted: the
    batch an earlier attempt created is adopted if it can be found, else the chunk ends
    unsubmitted, its lines canceled.
    """
    now = deps.clock.now()
    lease = Lease(owner, now + deps.settings.lease_seconds)

    lease_ended: float | None = None

    def take(current: Chunk) -> Chunk | None:
        nonlocal lease_ended
        if not needs_submit(current, now):
            return None
        lease_ended = current.lease.until if current.lease is not None else None
        return current.to(
            ChunkState.SUBMITTING,
            now,
            lease=lease,
            attempts=current.attempts + 1,
            # Keep the first attempt's start: the batch we may have to find is that old.
            submit_started_at=current.submit_started_at or now,
        )

    leased = deps.store.update_chunk(chunk.job_id, chunk.index, take)
    if leased is None:
        return None
    provider = deps.providers.get(leased.provider)
    tag = BatchTag(leased.job_id, leased.index)
    try:
        batch = None
        if leased.attempts > 1:
            batch = reconcile(deps, provider, leased, lease_ended or now)
        if batch is None and not submit_new:
            return deps.store.update_chunk(
                leased.job_id, leased.index, lambda c: _unsubmitted(c, owner, deps.clock.now())
            )
        if batch is None:
            payload = StagedPayload(
                leased.payload_uri,
                leased.payload_bytes,
                functools.partial(deps.blobs.open_read, leased.payload_uri),
            )
            batch = provider.submit(payload, tag, leased.model)
            log.info(
                "submitted",
                extra=fields(
                    job_id=tag.job_id,
                    chunk=tag.chunk,
                    batch_id=batch.batch_id,
                    requests=leased.request_count,
                ),
            )
    except ProviderError as exc:
        if exc.retryable:
            # Give the lease back now; the next try reconciles first, in case the
            # provider did create the batch before the error reached us.
            deps.store.update_chunk(
                leased.job_id, leased.index, lambda c: _release(c, owner, deps.clock.now())
            )
            raise
        reason = str(exc)
        log.error("submit failed", extra=fields(job_id=tag.job_id, chunk=tag.chunk, error=reason))
        return deps.store.update_chunk(
            leased.job_id, leased.index, lambda c: _fail(c, owner, reason, deps.clock.now())
        )
    recorded = deps.store.update_chunk(
        leased.job_id, leased.index, lambda c: _record(c, batch, deps.clock.now())
    )
    if recorded is None:
        _withdraw(deps, provider, tag, batch)
    return recorded


def reconcile(
    deps: Deps, provider: ProviderClient, chunk: Chunk, lease_ended: float
) -> ProviderBatch | None:
    """The batch an earlier attempt at `chunk` created, if it can be told apart; None
    means that no attempt got a batch created (or that it cannot be found): submit again.

    Candidates were created inside the earlier attempts' window, from the first attempt's
    start to the end of the last expired lease (`lease_ended`), widened by the clock skew,
    and hold the chunk's request count. Where the provider tags batches (OpenAI metadata,
    Vertex labels) there is at most one, and it is ours. Where it does not (Anthropic), a candidate that
    another chunk has recorded as its batch is not ours; the chunk adopts the one that is
    left, and only if exactly one is.

    Residual risk without tags: a batch of the same size that something else created in
    the window with the same API key (another job's chunk whose own record is not written
    yet, or another program) and that is the only candidate left when ours was never
    created, is adopted by mistake; two chunks of one job, both crashed mid-submit in one
    window with equal counts, leave two candidates, so both are submitted again (the
    orphans run and are billed, unread). A submit call that outlives its lease and races a
    second submitter is settled when recording: the first record wins, and the loser
    cancels its batch unless the winner adopted it (`_withdraw`).
    """
    tag = BatchTag(chunk.job_id, chunk.index)
    since = (chunk.submit_started_at or lease_ended) - CLOCK_SKEW_SECONDS
    until = lease_ended + CLOCK_SKEW_SECONDS
    candidates = provider.find_batches(tag, since, until, chunk.request_count)
    ours = [b for b in candidates if deps.store.batch_recorded_by(b.batch_id) in (None, tag)]
    context = {"job_id": tag.job_id, "chunk": tag.chunk, "candidates": len(candidates)}
    if len(ours) == 1:
        log.info("adopted batch", extra=fields(**context, batch_id=ours[0].batch_id))
        return ours[0]
    if ours:
        log.warning(
            "several unclaimed batches match the submit window and count; submitting again",
            extra=fields(**context, batch_ids=[b.batch_id for b in ours]),
        )
    return None


def _held(chunk: Chunk, owner: str) -> bool:
    """Still submitting under `owner`'s lease (nobody took it over)."""
    return (
        chunk.state is ChunkState.SUBMITTING
        and chunk.lease is not None
        and chunk.lease.owner == owner
    )


def _release(chunk: Chunk, owner: str, now: float) -> Chunk | None:
    if not _held(chunk, owner):
        return None
    return replace(chunk, lease=Lease(owner, now), updated_at=now)


def _unsubmitted(chunk: Chunk, owner: str, now: float) -> Chunk | None:
    if not _held(chunk, owner):
        return None
    return chunk.to(ChunkState.ENDED, now, lease=None, batch_state=BatchState.CANCELED)


def _fail(chunk: Chunk, owner: str, error: str, now: float) -> Chunk | None:
    if not _held(chunk, owner):
        return None
    return chunk.to(ChunkState.ENDED, now, lease=None, error=error)


def _withdraw(deps: Deps, provider: ProviderClient, tag: BatchTag, batch: ProviderBatch) -> None:
    """Our submit outlived its lease and another attempt settled the chunk first.

    If that attempt adopted our batch, all is well. If it recorded a batch of its own (or
    ended the chunk), ours is a duplicate nobody will read: cancel it, so that it neither
    runs nor bills. A cancel that fails is logged with the batch id; it is not retried.
    """
    current = next((c for c in deps.store.get_chunks(tag.job_id) if c.index == tag.chunk), None)
    if current is not None and current.batch_id == batch.batch_id:
        return
    context = {
        "job_id": tag.job_id,
        "chunk": tag.chunk,
        "batch_id": batch.batch_id,
        "recorded_batch_id": current.batch_id if current is not None else None,
    }
    log.warning(
        "another attempt recorded the chunk first; cancelling our duplicate",
        extra=fields(**context),
    )
    try:
        provider.cancel(batch.batch_id)
    except ProviderError as exc:
        log.error("could not cancel a duplicate batch", extra=fields(**context, error=str(exc)))


def _record(chunk: Chunk, batch: ProviderBatch, now: float) -> Chunk | None:
    if chunk.state is not ChunkState.SUBMITTING:
        return None
    target = ChunkState.ENDED if batch.state.ended else ChunkState.RUNNING
    return chunk.to(
        target,
        now,
        lease=None,
        batch_id=batch.batch_id,
        batch_state=batch.state,
        batch_counts=batch.counts,
    )


def refresh(deps: Deps, chunk: Chunk) -> Chunk | None:
    """Ask the provider how a running chunk's batch is doing; record it."""
    if chunk.state is not ChunkState.RUNNING or chunk.batch_id is None:
        return None
    batch = deps.providers.get(chunk.provider).get_batch(chunk.batch_id)
    if batch.state == chunk.batch_state and batch.counts == chunk.batch_counts:
        return chunk
    now = deps.clock.now()

    def update(current: Chunk) -> Chunk | None:
        if current.state is not ChunkState.RUNNING or current.batch_id != batch.batch_id:
            return None
        target = ChunkState.ENDED if batch.state.ended else ChunkState.RUNNING
        return current.to(target, now, batch_state=batch.state, batch_counts=batch.counts)

    return deps.store.update_chunk(chunk.job_id, chunk.index, update)
