"""One chunk's batch: create it, record it, withdraw a duplicate, or settle a refusal.

The steps `dispatch` takes under a chunk's submit lease, whichever way the provider's
batches are found again (tags, or the create lock).
"""

from __future__ import annotations

import functools
import time

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change
from batchline.domain.models import BatchTag, Chunk, ProviderBatch
from batchline.domain.providers.registry import provider as provider_of
from batchline.domain.quotas import backoff
from batchline.errors import ProviderError, RetryableError
from batchline.log import fields, get_logger
from batchline.ports import ProviderClient, StagedPayload

log = get_logger(__name__)

#: Tries to record a batch the provider accepted, and the pause before the second (then
#: doubled): about 15 s in all, well inside a lease the heartbeat keeps renewing.
RECORD_ATTEMPTS = 5
RECORD_BACKOFF_SECONDS = 1.0


class GiveBack(Exception):
    """Raised inside a submit's heartbeat block: give the submit lease back, but only once
    the heartbeat has stopped (`dispatch`): a renewal landing after the release would
    hold the chunk for another whole lease. Then `error`, if any, is raised again."""

    def __init__(self, error: ProviderError | None = None) -> None:
        super().__init__(str(error) if error is not None else "give the lease back")
        self.error = error


def create(deps: Deps, provider: ProviderClient, chunk: Chunk) -> ProviderBatch:
    """Create `chunk`'s batch from its input uploaded while it waited for its quota
    (`upload_ahead`), if it has one, else from its staged payload."""
    tag = BatchTag(chunk.job_id, chunk.index)
    batch = provider.create_batch(
        staged(deps, chunk), tag, chunk.model, uploaded=chunk.uploaded_input
    )
    log.info(
        "submitted",
        extra=context(
            chunk,
            batch_id=batch.batch_id,
            requests=chunk.request_count,
            uploaded_input=chunk.uploaded_input,
        ),
    )
    return batch


def staged(deps: Deps, chunk: Chunk) -> StagedPayload:
    """`chunk`'s payload as staged in the work bucket (read only when opened)."""
    return StagedPayload(
        chunk.payload_uri,
        chunk.payload_bytes,
        functools.partial(deps.blobs.open_read, chunk.payload_uri),
    )


def record(
    deps: Deps, provider: ProviderClient, chunk: Chunk, batch: ProviderBatch
) -> Chunk | None:
    """Record the batch the provider accepted for `chunk`. A store that fails is tried
    again (bounded, with backoff) before the holder gives up its claim (its lease then
    runs out, and the next holder adopts the batch); if another attempt recorded the
    chunk first, ours is withdrawn. A batch already failed for the provider's quota (one
    adopted after a crash) is not recorded: the chunk goes back to pending with a backoff."""
    now = deps.clock.now()
    refused_for_quota = provider_of(chunk.provider).quota.failed_for_quota(batch)
    change = Change(claims.record_batch, batch, now)
    if refused_for_quota:
        log.warning("adopted a batch failed for its quota; sent again later", extra=context(chunk))
        change = Change(claims.requeue_adopted, batch, now, backoff_until(deps, chunk, now))
    recorded = None
    for attempt in range(RECORD_ATTEMPTS):
        try:
            recorded = settle(deps, chunk, change)
            break
        except RetryableError as exc:
            if attempt + 1 == RECORD_ATTEMPTS:
                log.error(
                    "could not record an accepted batch", extra=context(chunk, error=str(exc))
                )
                raise
            log.warning("recording a batch failed; retrying", extra=context(chunk, error=str(exc)))
            time.sleep(RECORD_BACKOFF_SECONDS * 2**attempt)
    if recorded is None and not refused_for_quota:
        withdraw(deps, provider, BatchTag(chunk.job_id, chunk.index), batch)
    return recorded


def refused(deps: Deps, chunk: Chunk, owner: str, exc: ProviderError) -> Chunk | None:
    """A provider call failed. Its quota is full (`QuotaPolicy.refused`: a 429): the
    chunk goes back to pending with a backoff, its lines untouched. Retryable: the lease
    is given back and the error raised (`GiveBack`; the next try looks for the batch
    first, in case the provider did create it). Otherwise end the chunk with the error
    (refused for good)."""
    now = deps.clock.now()
    if provider_of(chunk.provider).quota.refused(exc.status):
        log.warning("provider quota full; sent again later", extra=context(chunk, error=str(exc)))
        until = backoff_until(deps, chunk, now, exc.retry_after)
        return settle(deps, chunk, Change(claims.requeue_submit, owner, now, until))
    if exc.retryable:
        raise GiveBack(exc) from exc
    reason = str(exc)
    log.error("submit failed", extra=context(chunk, error=reason))
    return settle(deps, chunk, Change(claims.fail_submit, owner, reason, deps.clock.now()))


def withdraw(deps: Deps, provider: ProviderClient, tag: BatchTag, batch: ProviderBatch) -> None:
    """Our submit outlived its lease and another attempt settled the chunk first.

    If that attempt adopted our batch, all is well. If it recorded a batch of its own (or
    ended the chunk), ours is a duplicate nobody will read: cancel it, so that it neither
    runs nor bills. A cancel that fails is logged with the batch id; it is not retried.
    """
    current = next((c for c in deps.store.get_chunks(tag.job_id) if c.index == tag.chunk), None)
    if current is not None and current.batch_id == batch.batch_id:
        return
    about = fields(
        job_id=tag.job_id,
        chunk=tag.chunk,
        batch_id=batch.batch_id,
        recorded_batch_id=current.batch_id if current is not None else None,
    )
    log.warning("another attempt recorded the chunk first; cancelling our duplicate", extra=about)
    try:
        provider.cancel(batch.batch_id)
    except ProviderError as exc:
        about["fields"]["error"] = str(exc)
        log.error("could not cancel a duplicate batch", extra=about)


def backoff_until(deps: Deps, chunk: Chunk, now: float, retry_after: float | None = None) -> float:
    """When a chunk the provider's quota sends back now may go again: when the provider
    said (`retry_after`, its Retry-After: at least a second, at most the longest
    backoff), else after our own backoff (`quotas.backoff`)."""
    settings = deps.settings
    if retry_after is not None:
        return now + min(max(retry_after, 1.0), settings.quota_backoff_max_seconds)
    wait = backoff(
        chunk.requeues + 1, settings.quota_backoff_seconds, settings.quota_backoff_max_seconds
    )
    return now + wait


def settle(deps: Deps, chunk: Chunk, change: Change[Chunk]) -> Chunk | None:
    """Apply a claim rule to `chunk`'s record."""
    return deps.store.update_chunk(chunk.job_id, chunk.index, change)


def context(chunk: Chunk, **more: object) -> dict[str, object]:
    """Log fields naming the chunk."""
    return fields(job_id=chunk.job_id, chunk=chunk.index, **more)
