"""Cancelling a job: asked for through the API or the CLI, carried out by poll.

Asking only records the wish on the job (`cancel_requested_at`), in a transaction, so
the caller needs no provider credentials and a repeated ask changes nothing. From then on
every poll tick settles the job's chunks instead of submitting them (`settle`): a chunk
that never reached its provider ends as canceled; a running batch is asked to cancel
once, then followed as usual until the provider ends it. Collect then writes one line per
input line as always (answers that came back before the cancel as they are, the rest
`canceled`) and ends the job `canceled`; no repair round starts after the ask.
"""

from __future__ import annotations

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change
from batchline.domain.models import BatchState, Chunk, ChunkState, Job
from batchline.log import fields, get_logger
from batchline.ports import JobStore
from batchline.services import dispatch, upload_ahead

log = get_logger(__name__)


class JobEnded(Exception):
    """The job had ended before the cancel was asked for."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.job_id} has ended already ({job.state})")
        self.job = job


def request_cancel(store: JobStore, job_id: str, now: float) -> Job | None:
    """Record that `job_id` is to be canceled; the job as it is now, None if unknown.

    Asking again, or asking for a job already canceled, returns the job unchanged; asking
    for a job that ended otherwise raises JobEnded.
    """
    asked = store.update_job(job_id, Change(claims.ask_cancel, now))
    if asked is not None:
        log.info("cancel requested", extra=fields(job_id=job_id, state=str(asked.state)))
        return asked
    job = store.get_job(job_id)
    if job is not None and job.state.terminal and job.cancel_requested_at is None:
        raise JobEnded(job)
    return job


def settle(deps: Deps, chunk: Chunk, owner: str) -> Chunk | None:
    """One poll tick's part in canceling `chunk`'s job; the updated chunk, if it changed."""
    now = deps.clock.now()
    if chunk.state is ChunkState.PENDING:
        ended = deps.store.update_chunk(
            chunk.job_id, chunk.index, Change(claims.cancel_pending, now)
        )
        if ended is not None and ended.uploaded_input is not None:
            upload_ahead.discard(deps, ended, ended.uploaded_input)  # it feeds no batch now
        return ended
    if chunk.state is ChunkState.SUBMITTING:
        # A live lease: its holder records the batch, which the next tick cancels. An
        # expired one: the batch its holder may have created is adopted, never a new one.
        if claims.submit_due(chunk, owner, now):
            return dispatch.dispatch(deps, chunk, owner, send_new=False)
        return None
    if chunk.state is ChunkState.RUNNING and chunk.batch_id is not None:
        if chunk.batch_state is not BatchState.CANCELING:
            deps.providers.get(chunk.provider).cancel(chunk.batch_id)
            log.info(
                "batch cancel requested",
                extra=fields(job_id=chunk.job_id, chunk=chunk.index, batch_id=chunk.batch_id),
            )
        return dispatch.refresh(deps, chunk)
    return None


def end_long_queue(deps: Deps, job: Job, chunk: Chunk) -> Chunk | None:
    """Cancel `chunk`'s batch when it has sat queued at its provider past the job's
    `max_queue_hours` (a Vertex job may wait 72 h for capacity): its lines then fail
    over when collected. Noted on the chunk first, so a tick that dies before the cancel
    is followed by one that cancels (cancel asks nothing twice once the batch cancels)."""
    hours = job.options.max_queue_hours
    if hours is None or chunk.state is not ChunkState.RUNNING or chunk.batch_id is None:
        return None
    rule = Change(claims.give_up_queue, deps.clock.now(), max_queue_hours=hours)
    noted = deps.store.update_chunk(chunk.job_id, chunk.index, rule)
    stuck = chunk.error is not None and chunk.error.startswith(claims.QUEUE_TIMEOUT)
    if noted is None and not (stuck and chunk.batch_state is BatchState.QUEUED):
        return None
    chunk = noted or chunk
    deps.providers.get(chunk.provider).cancel(chunk.batch_id or "")
    log.warning(
        "batch queued too long; cancelled, its lines fail over",
        extra=fields(job_id=chunk.job_id, chunk=chunk.index, batch_id=chunk.batch_id),
    )
    return dispatch.refresh(deps, chunk) or chunk
