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

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change, LeaseTerms
from batchline.domain.models import BatchTag, Chunk, ChunkState, ProviderBatch
from batchline.errors import ProviderError
from batchline.log import fields, get_logger
from batchline.ports import ProviderClient, StagedPayload

log = get_logger(__name__)

# Provider clocks and ours differ; look a little further back than the lease says.
CLOCK_SKEW_SECONDS = 120.0


def dispatch(deps: Deps, chunk: Chunk, owner: str, *, send_new: bool = True) -> Chunk | None:
    """Submit `chunk` unless another invocation holds it; returns the updated chunk.

    With `send_new=False` (its job is being canceled) nothing new is submitted: the
    batch an earlier attempt created is adopted if it can be found, else the chunk ends
    unsubmitted, its lines canceled.
    """
    now = deps.clock.now()
    take = Change(claims.take_for_submit, owner, now, LeaseTerms(deps.settings.lease_seconds))
    leased = deps.store.update_chunk(chunk.job_id, chunk.index, take)
    if leased is None:
        return None
    provider = deps.providers.get(leased.provider)
    try:
        batch = None
        if leased.attempts > 1:
            batch = reconcile(deps, provider, leased, _lease_ended(take.seen, now))
        if batch is None and not send_new:
            return _settle(deps, leased, Change(claims.end_unsubmitted, owner, deps.clock.now()))
        if batch is None:
            batch = _submit(deps, provider, leased)
    except ProviderError as exc:
        if exc.retryable:
            # Give the lease back now; the next try reconciles first, in case the
            # provider did create the batch before the error reached us.
            _settle(deps, leased, Change(claims.release_submit, owner, deps.clock.now()))
            raise
        reason = str(exc)
        log.error(
            "submit failed", extra=fields(job_id=leased.job_id, chunk=leased.index, error=reason)
        )
        return _settle(deps, leased, Change(claims.fail_submit, owner, reason, deps.clock.now()))
    recorded = _settle(deps, leased, Change(claims.record_batch, batch, deps.clock.now()))
    if recorded is None:
        _withdraw(deps, provider, BatchTag(leased.job_id, leased.index), batch)
    return recorded


def _settle(deps: Deps, chunk: Chunk, change: Change[Chunk]) -> Chunk | None:
    return deps.store.update_chunk(chunk.job_id, chunk.index, change)


def _lease_ended(taken_over: Chunk | None, now: float) -> float:
    """Where the earlier attempts' window ends: when the lease we took over ran out."""
    lease = taken_over.lease if taken_over is not None else None
    return lease.until if lease is not None else now


def _submit(deps: Deps, provider: ProviderClient, chunk: Chunk) -> ProviderBatch:
    payload = StagedPayload(
        chunk.payload_uri,
        chunk.payload_bytes,
        functools.partial(deps.blobs.open_read, chunk.payload_uri),
    )
    batch = provider.create_batch(payload, BatchTag(chunk.job_id, chunk.index), chunk.model)
    log.info(
        "submitted",
        extra=fields(
            job_id=chunk.job_id,
            chunk=chunk.index,
            batch_id=batch.batch_id,
            requests=chunk.request_count,
        ),
    )
    return batch


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


def refresh(deps: Deps, chunk: Chunk) -> Chunk | None:
    """Ask the provider how a running chunk's batch is doing; record it."""
    if chunk.state is not ChunkState.RUNNING or chunk.batch_id is None:
        return None
    batch = deps.providers.get(chunk.provider).get_batch(chunk.batch_id)
    if batch.state == chunk.batch_state and batch.counts == chunk.batch_counts:
        return chunk
    return _settle(deps, chunk, Change(claims.follow_batch, batch, deps.clock.now()))
