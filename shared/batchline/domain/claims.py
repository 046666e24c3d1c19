"""Claims: the rules that let at-least-once triggers change jobs and chunks exactly once.

Triggers deliver twice and invocations die half-way, so every step that must happen once
is guarded by its record in Firestore: before acting, an invocation changes the record in
a transaction to say that it is at the step (a lease: its owner and until when it may
act) or that the step is done; whoever reads the record after it knows to leave it, to
take over, or that nothing is left to do. Powertools' idempotency records are the model:
explicit states, an expiry, and one place that decides takeover (`lease_state`).

Each rule here is a pure function of the record as it is now, the invocation (`owner`),
the time and what the step brings. It returns the new record, or why it leaves the record
as it is (`Leave`). Services run a rule inside `JobStore.update_job`/`update_chunk`
through `Change`. `tests/unit/test_claims.py` is the table of every rule against every
lease state: the readable specification of exactly-once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Concatenate, Generic, ParamSpec, TypeVar

from batchline.domain.models import (
    BatchState,
    BatchTag,
    Chunk,
    ChunkState,
    CreateIntent,
    Hold,
    Job,
    JobState,
    Lease,
    ProviderBatch,
    ProviderLock,
    QuotaPool,
    Waiter,
)
from batchline.domain.results import Tally

# ---------------------------------------------------------------------------- leases


class LeaseState(StrEnum):
    """A lease as one invocation (`owner`) sees it at one moment."""

    FREE = "free"  # no lease
    MINE = "mine"  # mine and live
    MINE_EXPIRED = "mine, expired"  # mine, run out, and nobody has taken it over
    HELD = "held"  # another invocation's, live: its holder is at work
    EXPIRED = "expired"  # another invocation's, run out: its holder is taken for dead

    @property
    def live(self) -> bool:
        """Someone (me or another) may still act under this lease."""
        return self in (LeaseState.MINE, LeaseState.HELD)

    @property
    def mine(self) -> bool:
        """The lease is mine, live or not: nobody took it over, I may act on it."""
        return self in (LeaseState.MINE, LeaseState.MINE_EXPIRED)


def lease_state(lease: Lease | None, owner: str, now: float) -> LeaseState:
    """What `lease` is to `owner` at `now`; the one place that decides a lease has run out
    (at `until` itself it has)."""
    if lease is None:
        return LeaseState.FREE
    live = lease.until > now
    if lease.owner == owner:
        return LeaseState.MINE if live else LeaseState.MINE_EXPIRED
    return LeaseState.HELD if live else LeaseState.EXPIRED


@dataclass(frozen=True)
class LeaseTerms:
    """How long a lease lasts and when its holder renews it: every lease a rule grants
    comes from here (`BATCHLINE_LEASE_SECONDS`)."""

    seconds: float

    def lease(self, owner: str, now: float) -> Lease:
        """A lease for `owner`, taken or renewed at `now`."""
        return Lease(owner, now + self.seconds)

    def renewal_due(self, renewed_at: float, now: float) -> bool:
        """Whether a holder that last took or renewed its lease at `renewed_at` renews it
        now: once a third of it has gone, so a live holder is never taken for dead."""
        return now - renewed_at >= self.seconds / 3


def expiry(now: float, retention_days: float | None) -> datetime | None:
    """When a record that ends at `now` may be deleted by the TTL policy (None: never)."""
    if retention_days is None:
        return None
    return datetime.fromtimestamp(now + retention_days * 86400, tz=UTC)


# ---------------------------------------------------------------------------- outcomes


class Leave(StrEnum):
    """Why a rule leaves a record as it is."""

    DONE = "done"  # the step happened already, or the record is past it
    HELD = "held"  # a live lease holds the record: its holder is at the step
    NOT_MINE = "not mine"  # the caller holds no lease on it (never did, or lost it)
    NOT_DUE = "not due"  # too early to do it again
    CANCELED = "canceled"  # a cancel was asked for: nothing new starts
    UNSETTLED = "unsettled"  # a create lock's intent is open: settle it first
    FREE = "free"  # no live lease holds it: the caller may take it
    FULL = "full"  # a quota pool has no room for it (its wait is noted already)
    QUEUED = "queued"  # another job waits for the pool first (its wait is noted already)


R = TypeVar("R", Job, Chunk, ProviderLock, QuotaPool)
P = ParamSpec("P")


class Change(Generic[R]):
    """A rule bound to its arguments, in the shape `JobStore.update_job`/`update_chunk`
    take: called with the current record, it returns the rule's new record, or None to
    leave the record as it is.

    It remembers its last run (a store runs it again when a transaction retries):
    `seen`, the record as the rule saw it, and `left`, why the rule left it (None when
    it changed it, or never ran because the record does not exist).
    """

    def __init__(
        self, rule: Callable[Concatenate[R, P], R | Leave], /, *args: P.args, **kwargs: P.kwargs
    ) -> None:
        self._apply: Callable[[R], R | Leave] = lambda current: rule(current, *args, **kwargs)
        self.seen: R | None = None
        self.left: Leave | None = None

    def __call__(self, current: R) -> R | None:
        self.seen = current
        outcome = self._apply(current)
        self.left = outcome if isinstance(outcome, Leave) else None
        return None if isinstance(outcome, Leave) else outcome


# ---------------------------------------------------------------------------- jobs


def take_for_plan(job: Job, owner: str, now: float, terms: LeaseTerms) -> Job | Leave:
    """Take the planning lease of an accepted job, or extend my own; a live lease of
    another planner is left alone, an expired one is taken over."""
    if job.state is not JobState.ACCEPTED:
        return Leave.DONE
    if lease_state(job.lease, owner, now) is LeaseState.HELD:
        return Leave.HELD
    return replace(job, lease=terms.lease(owner, now), updated_at=now)


def renew_plan(job: Job, owner: str, now: float, terms: LeaseTerms) -> Job | Leave:
    """Extend my planning lease while I read, if it is still mine (even run out: nobody
    took it over); a planner that lost it stops."""
    if job.state is not JobState.ACCEPTED:
        return Leave.DONE
    if not lease_state(job.lease, owner, now).mine:
        return Leave.NOT_MINE
    return replace(job, lease=terms.lease(owner, now), updated_at=now)


def commit_plan(
    job: Job, owner: str, now: float, *, counts: dict[str, int], chunk_count: int
) -> Job | Leave:
    """End my planning: the job goes to submitting with its `chunk_count` chunks (to
    collecting when it has none, its collect asked for now) and the lease is released.
    Only the lease's holder commits, so one plan's chunks are ever created."""
    if job.state is not JobState.ACCEPTED:
        return Leave.DONE
    if not lease_state(job.lease, owner, now).mine:
        return Leave.NOT_MINE
    target = JobState.SUBMITTING if chunk_count else JobState.COLLECTING
    return job.to(
        target,
        now,
        lease=None,
        counts=counts,
        chunk_count=chunk_count,
        collect_requested_at=now if target is JobState.COLLECTING else None,
    )


def reject(job: Job, reason: str, now: float, expire_at: datetime | None) -> Job | Leave:
    """An accepted job that cannot run ends rejected with `reason`, whoever holds its
    planning lease (the file is as unreadable for any planner); nothing was sent."""
    if job.state is not JobState.ACCEPTED:
        return Leave.DONE
    return job.to(
        JobState.REJECTED, now, lease=None, error=reason, ended_at=now, expire_at=expire_at
    )


def ask_cancel(job: Job, now: float) -> Job | Leave:
    """Record that the job is to be canceled, once; poll carries it out."""
    if job.state.terminal or job.cancel_requested_at is not None:
        return Leave.DONE
    return replace(job, cancel_requested_at=now, updated_at=now)


def start_running(job: Job, now: float) -> Job | Leave:
    """Every chunk of a submitting job has reached its provider: the job runs."""
    if job.state is not JobState.SUBMITTING:
        return Leave.DONE
    return job.to(JobState.RUNNING, now, submitted_at=now)


def take_for_advance(job: Job, owner: str, now: float, terms: LeaseTerms) -> Job | Leave:
    """Take the lease that lets one invocation at a time move a submitting or running job
    forward (submit, follow or cancel its chunks). Another's live lease is left alone:
    its holder is at it (the caller asks it to go round once more: `ask_advance`). Taking
    clears an ask: the taker goes round anyway, and a dead holder's ask is void."""
    if job.state not in (JobState.SUBMITTING, JobState.RUNNING):
        return Leave.DONE
    if lease_state(job.lease, owner, now) is LeaseState.HELD:
        return Leave.HELD
    return replace(job, lease=terms.lease(owner, now), advance_asked_at=None, updated_at=now)


def ask_advance(job: Job, owner: str, now: float) -> Job | Leave:
    """An advance is asked for (a poll message, a webhook) while another invocation holds
    the job's lease: note it, so that the holder goes round once more before it gives the
    lease back (`release_unless_asked`) and what changed since its last look (a batch
    that just ended, a quota freed) is not left for the next tick. A lease found free is
    the caller's to take (`FREE`); one asked of already is left (`DONE`)."""
    if job.state not in (JobState.SUBMITTING, JobState.RUNNING):
        return Leave.DONE
    if lease_state(job.lease, owner, now) is not LeaseState.HELD:
        return Leave.FREE
    if job.advance_asked_at is not None:
        return Leave.DONE
    return replace(job, advance_asked_at=now, updated_at=now)


def release_unless_asked(job: Job, owner: str, now: float) -> Job | Leave:
    """At the end of my advance: give my lease back, or, when an advance was asked for
    while I held it (`ask_advance`), keep it and clear the ask: I go round once more (the
    record comes back with its lease). Either way in one transaction, so an ask is never
    lost between my last look and the release."""
    if job.state not in (JobState.SUBMITTING, JobState.RUNNING):
        return Leave.DONE
    if job.lease is None or not lease_state(job.lease, owner, now).mine:
        return Leave.NOT_MINE
    if job.advance_asked_at is not None:
        return replace(job, advance_asked_at=None, updated_at=now)
    return replace(job, lease=None, updated_at=now)


def renew_advance(job: Job, owner: str, now: float, terms: LeaseTerms) -> Job | Leave:
    """Extend my advancing lease (a heartbeat) while it is mine; one that was taken over
    tells me to stop."""
    if job.state not in (JobState.SUBMITTING, JobState.RUNNING):
        return Leave.DONE
    if not lease_state(job.lease, owner, now).mine:
        return Leave.NOT_MINE
    return replace(job, lease=terms.lease(owner, now), updated_at=now)


def release_advance(job: Job, owner: str, now: float) -> Job | Leave:
    """Give my advancing lease back: the next tick may take the job up at once."""
    if job.state not in (JobState.SUBMITTING, JobState.RUNNING):
        return Leave.DONE
    if job.lease is None or not lease_state(job.lease, owner, now).mine:
        return Leave.NOT_MINE
    return replace(job, lease=None, updated_at=now)


def start_collecting(job: Job, now: float) -> Job | Leave:
    """Every chunk has ended: the job is to be collected, asked for now."""
    if job.state not in (JobState.SUBMITTING, JobState.RUNNING):
        return Leave.DONE
    return job.to(
        JobState.COLLECTING,
        now,
        lease=None,
        advance_asked_at=None,
        submitted_at=job.submitted_at or now,
        collect_requested_at=now,
        waiting=None,
    )


def ask_collect_again(
    job: Job, now: float, retry_seconds: float, unsent_seconds: float | None = None
) -> Job | Leave:
    """Ask again for the collect of a collecting job: `retry_seconds` after the last ask
    whose message went out (its collect may have died), or `unsent_seconds` after an ask
    whose message never went out (its sender died between the state change and the
    publish: taken for dead like any lease holder). None: `retry_seconds` for both."""
    if job.state is not JobState.COLLECTING:
        return Leave.DONE
    asked = job.collect_requested_at or 0
    sent = job.collect_sent_at is not None and job.collect_sent_at >= asked
    wait = retry_seconds if sent or unsent_seconds is None else unsent_seconds
    if asked + wait > now:
        return Leave.NOT_DUE
    return replace(job, collect_requested_at=now, updated_at=now)


def collect_sent(job: Job, requested_at: float | None, now: float) -> Job | Leave:
    """The collect message asked for at `requested_at` went out: from now on poll gives
    that collect `collect_retry_seconds`. A newer ask, or one noted already, is left."""
    if job.state is not JobState.COLLECTING or job.collect_requested_at != requested_at:
        return Leave.DONE
    if job.collect_sent_at is not None and job.collect_sent_at >= (requested_at or 0):
        return Leave.DONE
    return replace(job, collect_sent_at=now)


def reopen_for_round(job: Job, now: float, *, chunk_count: int, new_chunks: int) -> Job | Leave:
    """Back to running for a follow-up round: `new_chunks` chunks after the
    `chunk_count` the collecting job had. A collect that saw another number of chunks
    comes after another round started; a job being canceled sends nothing again."""
    if job.state is not JobState.COLLECTING or job.chunk_count != chunk_count:
        return Leave.DONE
    if job.cancel_requested_at is not None:
        return Leave.CANCELED
    return job.to(
        JobState.RUNNING, now, chunk_count=chunk_count + new_chunks, collect_requested_at=None
    )


def reopen_for_resend(job: Job, now: float) -> Job | Leave:
    """Back to running: a collect found a chunk whose recorded batch holds another
    chunk's requests, and sends the chunk's own (a job being canceled cancels them
    instead, through poll like any pending chunk)."""
    if job.state is not JobState.COLLECTING:
        return Leave.DONE
    return job.to(JobState.RUNNING, now, collect_requested_at=None)


def finish(
    job: Job, state: JobState, now: float, *, tally: Tally, expire_at: datetime | None
) -> Job | Leave:
    """A collected job ends in `state`, with the counts, tokens and cost of `tally`;
    only the first collect to get here ends it."""
    if job.state is not JobState.COLLECTING:
        return Leave.DONE
    return job.to(
        state,
        now,
        counts={**job.counts, **tally.counts},
        usage={"input_tokens": tally.input_tokens, "output_tokens": tally.output_tokens},
        cost_usd=round(tally.cost_usd, 10),
        ended_at=now,
        expire_at=expire_at,
    )


def mark_published(job: Job) -> Job | Leave:
    """Record that `job.completed` went out (it may go out twice; it is marked once)."""
    if job.event_published:
        return Leave.DONE
    return replace(job, event_published=True)


# ---------------------------------------------------------------------------- chunks


def submit_due(chunk: Chunk, owner: str, now: float) -> bool:
    """Whether `owner` is to send `chunk` to its provider now: it is pending (and not
    waiting out a quota's backoff), or submitting under no live lease (its holder is
    taken for dead; while my own lease is live, I am at it already)."""
    if chunk.state is ChunkState.PENDING:
        return chunk.not_before is None or chunk.not_before <= now
    return chunk.state is ChunkState.SUBMITTING and not lease_state(chunk.lease, owner, now).live


def take_for_submit(chunk: Chunk, owner: str, now: float, terms: LeaseTerms) -> Chunk | Leave:
    """Lease a chunk that is due (`submit_due`) before creating its batch; one more
    attempt, and the first attempt's start kept (the batch a takeover may have to find
    at the provider is that old)."""
    if chunk.state not in (ChunkState.PENDING, ChunkState.SUBMITTING):
        return Leave.DONE
    if not submit_due(chunk, owner, now):
        return Leave.HELD
    return chunk.to(
        ChunkState.SUBMITTING,
        now,
        lease=terms.lease(owner, now),
        attempts=chunk.attempts + 1,
        submit_started_at=chunk.submit_started_at or now,
    )


def _submitting_under(chunk: Chunk, owner: str, now: float) -> Leave | None:
    """Why `owner` may not settle `chunk`'s submit (None: it may): the chunk is still
    submitting under `owner`'s lease, live or not, which nobody took over."""
    if chunk.state is not ChunkState.SUBMITTING:
        return Leave.DONE
    if not lease_state(chunk.lease, owner, now).mine:
        return Leave.NOT_MINE
    return None


def renew_submit(chunk: Chunk, owner: str, now: float, terms: LeaseTerms) -> Chunk | Leave:
    """Extend my submit lease (a heartbeat) while I create the batch, even run out if
    nobody took it over; one that was taken over tells me to stop."""
    left = _submitting_under(chunk, owner, now)
    if left is not None:
        return left
    return replace(chunk, lease=terms.lease(owner, now), updated_at=now)


def release_submit(chunk: Chunk, owner: str, now: float) -> Chunk | Leave:
    """Give my submit lease back (it ends now) after a failure worth retrying, so that
    the next attempt need not wait for it to run out; that attempt reconciles first."""
    left = _submitting_under(chunk, owner, now)
    if left is not None:
        return left
    return replace(chunk, lease=Lease(owner, now), updated_at=now)


def fail_submit(chunk: Chunk, owner: str, error: str, now: float) -> Chunk | Leave:
    """The provider refused my batch for good: the chunk ends with `error`, unsubmitted."""
    left = _submitting_under(chunk, owner, now)
    if left is not None:
        return left
    return chunk.to(ChunkState.ENDED, now, lease=None, error=error)


def end_unsubmitted(chunk: Chunk, owner: str, now: float) -> Chunk | Leave:
    """Its job is being canceled and no batch of an earlier attempt was found: the chunk
    ends canceled without reaching its provider."""
    left = _submitting_under(chunk, owner, now)
    if left is not None:
        return left
    return chunk.to(ChunkState.ENDED, now, lease=None, batch_state=BatchState.CANCELED)


def record_batch(chunk: Chunk, batch: ProviderBatch, now: float) -> Chunk | Leave:
    """Record the batch created (or adopted) for a submitting chunk. The first record
    wins, whoever holds the lease: a submit that outlived its lease may still record,
    and the loser of such a race withdraws its own batch."""
    if chunk.state is not ChunkState.SUBMITTING:
        return Leave.DONE
    return chunk.to(
        ChunkState.ENDED if batch.state.ended else ChunkState.RUNNING,
        now,
        lease=None,
        batch_id=batch.batch_id,
        batch_state=batch.state,
        batch_counts=batch.counts,
    )


def follow_batch(chunk: Chunk, batch: ProviderBatch, now: float) -> Chunk | Leave:
    """Record how the running chunk's batch is doing; the chunk ends when it has."""
    if chunk.state is not ChunkState.RUNNING or chunk.batch_id != batch.batch_id:
        return Leave.DONE
    return chunk.to(
        ChunkState.ENDED if batch.state.ended else ChunkState.RUNNING,
        now,
        batch_state=batch.state,
        batch_counts=batch.counts,
    )


#: The start of a chunk's error when its batch sat queued past the job's max_queue_hours.
QUEUE_TIMEOUT = "queue_timeout"


def give_up_queue(chunk: Chunk, now: float, *, max_queue_hours: float) -> Chunk | Leave:
    """The running chunk's batch has been queued at its provider longer than the job
    allows: note it on the chunk (its batch is then cancelled, and its lines fail over
    when collected). Once only; a chunk whose batch runs, or that is young, is left."""
    if chunk.state is not ChunkState.RUNNING or chunk.batch_state is not BatchState.QUEUED:
        return Leave.DONE
    if chunk.error is not None and chunk.error.startswith(QUEUE_TIMEOUT):
        return Leave.DONE
    queued = now - (chunk.submit_started_at or now)
    if queued < max_queue_hours * 3600:
        return Leave.DONE
    message = f"{QUEUE_TIMEOUT}: still queued at {chunk.provider} after {queued / 3600:.1f} h"
    return replace(chunk, error=f"{message} (max_queue_hours {max_queue_hours:g})", updated_at=now)


def resend(chunk: Chunk, wrong_batch: str, now: float) -> Chunk | Leave:
    """The chunk's recorded batch `wrong_batch` holds another chunk's requests: the chunk
    forgets it and is sent again (its own requests never ran), once."""
    if chunk.state is not ChunkState.ENDED or chunk.batch_id != wrong_batch:
        return Leave.DONE
    return chunk.to(
        ChunkState.PENDING,
        now,
        lease=None,
        submit_started_at=None,
        batch_id=None,
        batch_state=None,
        batch_counts={},
        error=None,
    )


def rebind(
    chunk: Chunk, wrong_batch: str | None, batch: ProviderBatch, now: float
) -> Chunk | Leave:
    """`batch` holds this chunk's requests, and the chunk recorded `wrong_batch` (another
    chunk's, or none): it records its own instead, ended as it is."""
    if chunk.state is not ChunkState.ENDED or chunk.batch_id != wrong_batch:
        return Leave.DONE
    return replace(
        chunk,
        batch_id=batch.batch_id,
        batch_state=batch.state,
        batch_counts=batch.counts,
        error=None,
        updated_at=now,
    )


def note_orphans(chunk: Chunk, batch_ids: list[str]) -> Chunk | Leave:
    """Batches made with this chunk's requests that nobody will read (duplicates, found
    and cancelled): each noted once, for the job's summary."""
    new = [b for b in batch_ids if b not in chunk.orphans and b != chunk.batch_id]
    if not new:
        return Leave.DONE
    return replace(chunk, orphans=[*chunk.orphans, *new])


def cancel_pending(chunk: Chunk, now: float) -> Chunk | Leave:
    """Its job is being canceled: a chunk nobody has started to submit ends canceled."""
    if chunk.state is not ChunkState.PENDING:
        return Leave.DONE
    return chunk.to(ChunkState.ENDED, now, batch_state=BatchState.CANCELED)


def stamp_expiry(chunk: Chunk, expire_at: datetime) -> Chunk | Leave:
    """Its job has ended: the chunk may be deleted with it (stamped once)."""
    if chunk.expire_at is not None:
        return Leave.DONE
    return replace(chunk, expire_at=expire_at)


# ---------------------------------------------------------------------------- create locks


def take_lock(
    lock: ProviderLock, owner: str, now: float, terms: LeaseTerms
) -> ProviderLock | Leave:
    """Take (or extend) a provider's create lock. Another's live lease is left alone: its
    holder is creating. An expired one is taken over with its intent kept: the new
    holder settles it (`settle_intent`) before anything else."""
    if lease_state(lock.lease, owner, now) is LeaseState.HELD:
        return Leave.HELD
    return replace(lock, lease=terms.lease(owner, now))


def renew_lock(
    lock: ProviderLock, owner: str, now: float, terms: LeaseTerms
) -> ProviderLock | Leave:
    """Extend my create lock (a heartbeat), even run out if nobody took it over."""
    if not lease_state(lock.lease, owner, now).mine:
        return Leave.NOT_MINE
    return replace(lock, lease=terms.lease(owner, now))


def declare_intent(lock: ProviderLock, owner: str, intent: CreateIntent) -> ProviderLock | Leave:
    """Say what I am about to create, under my lock: from this record on, a batch the
    provider lists after the intent's mark can only be this chunk's. An open intent
    (mine or my predecessor's) is settled first; nothing is declared over it."""
    if not lease_state(lock.lease, owner, intent.declared_at).mine:
        return Leave.NOT_MINE
    if lock.intent is not None:
        return Leave.UNSETTLED
    return replace(lock, intent=intent)


def settle_intent(
    lock: ProviderLock, owner: str, now: float, tag: BatchTag
) -> ProviderLock | Leave:
    """The batch of the intent for `tag` is accounted for: recorded on its chunk, or shown
    not to exist after the last create that could have made it. The intent closes."""
    if not lease_state(lock.lease, owner, now).mine:
        return Leave.NOT_MINE
    if lock.intent is None or lock.intent.tag != tag:
        return Leave.DONE
    return replace(lock, intent=None)


def release_lock(
    lock: ProviderLock, owner: str, now: float, settled: BatchTag | None = None
) -> ProviderLock | Leave:
    """Give my create lock back, closing the intent for `settled` (its batch is accounted
    for). With any other intent open it stays: if I die now, whoever takes the lock over
    settles that intent first."""
    if not lease_state(lock.lease, owner, now).mine:
        return Leave.NOT_MINE
    if lock.intent is not None and lock.intent.tag != settled:
        return Leave.UNSETTLED
    return replace(lock, lease=None, intent=None)


def note_waiting(job: Job, reason: str | None) -> Job | Leave:
    """Record why the job's chunks wait (None: none does), when it changed."""
    if job.state not in (JobState.SUBMITTING, JobState.RUNNING) or job.waiting == reason:
        return Leave.DONE
    return replace(job, waiting=reason)


# ---------------------------------------------------------------------------- quotas


def requeue_submit(chunk: Chunk, owner: str, now: float, until: float) -> Chunk | Leave:
    """The provider refused my create because its quota is full: the chunk goes back to
    pending until `until`, its lines untouched; the next wait is longer. (Not an error
    of the chunk's: the job's `waiting` says why it waits.)"""
    left = _submitting_under(chunk, owner, now)
    if left is not None:
        return left
    return chunk.to(
        ChunkState.PENDING, now, lease=None, not_before=until, requeues=chunk.requeues + 1
    )


def requeue_failed(chunk: Chunk, batch: ProviderBatch, now: float, until: float) -> Chunk | Leave:
    """The provider created the chunk's batch and then failed it for its quota: the
    chunk forgets it (noted in `quota_refused`, never adopted) and goes back to pending
    until `until`."""
    if chunk.state is not ChunkState.RUNNING or chunk.batch_id != batch.batch_id:
        return Leave.DONE
    return chunk.to(
        ChunkState.PENDING,
        now,
        not_before=until,
        requeues=chunk.requeues + 1,
        quota_refused=[*chunk.quota_refused, batch.batch_id],
        batch_id=None,
        batch_state=None,
        batch_counts={},
    )


def requeue_adopted(chunk: Chunk, batch: ProviderBatch, now: float, until: float) -> Chunk | Leave:
    """The batch found for a submitting chunk (adopted after a crash) has already failed
    for the provider's quota: not recorded (noted, never adopted again); the chunk goes
    back to pending until `until`. Like `record_batch`, whoever holds the lease."""
    if chunk.state is not ChunkState.SUBMITTING:
        return Leave.DONE
    return chunk.to(
        ChunkState.PENDING,
        now,
        lease=None,
        not_before=until,
        requeues=chunk.requeues + 1,
        quota_refused=[*chunk.quota_refused, batch.batch_id],
    )


def note_upload(chunk: Chunk, file_id: str, now: float) -> Chunk | Leave:
    """The chunk's input was uploaded to its provider ahead of its quota (`file_id`):
    noted while the chunk is pending and has none. Otherwise another invocation uploaded
    it first, or the chunk moved on: the uploader discards its own file."""
    if chunk.state is not ChunkState.PENDING or chunk.uploaded_input is not None:
        return Leave.DONE
    return replace(chunk, uploaded_input=file_id, updated_at=now)


@dataclass(frozen=True)
class Ask:
    """A chunk asking for room in a quota pool: its hold's key (`models.hold_key`), its
    job and the job's `created_at`, the room it needs, the quota's `limit`, and how long
    a job's wait counts without being asked again (`wait_seconds`)."""

    tag: str
    job_id: str
    created_at: float
    amount: int
    limit: int
    wait_seconds: float


def _rank(
    pool: QuotaPool, job_id: str, since: float, created_at: float
) -> tuple[int, float, float, str]:
    """Who goes first for a pool's room: the job with fewest chunks in it, then the one
    that has waited longest (a job asking afresh, its last batch just ended, queues
    behind those already waiting: a big job cannot take every room that its own batches
    free), then the oldest job (then the smaller id: never a tie)."""
    return (pool.held_by(job_id), since, created_at, job_id)


def reserve(pool: QuotaPool, ask: Ask, now: float) -> QuotaPool | Leave:
    """Hold room for a chunk before its batch is created.

    A chunk that holds room already (its earlier submitter died) takes it again. Else it
    is admitted when its room fits under the limit (a chunk larger than the whole quota:
    when the pool is empty) and no other waiting job goes first (`_rank`): the job's
    wait ends. Otherwise the job is noted as waiting (its place kept while it asks again
    within `wait_seconds`); the pool comes back without the chunk's hold, or with
    `Leave.FULL`/`Leave.QUEUED` when that was noted already."""
    mine = {j: w for j, w in pool.waiters.items() if j != ask.job_id}
    if ask.tag in pool.holds:
        held = pool.holds[ask.tag]
        return replace(pool, holds={**pool.holds, ask.tag: Hold(held.amount, now)}, waiters=mine)
    live = {j: w for j, w in mine.items() if w.seen_at + ask.wait_seconds > now}
    noted = pool.waiters.get(ask.job_id)
    since = noted.waiting_since if noted is not None else now
    me = _rank(pool, ask.job_id, since, ask.created_at)
    ahead = any(_rank(pool, j, w.waiting_since, w.created_at) < me for j, w in live.items())
    fits = pool.in_use + ask.amount <= ask.limit or not pool.holds
    if fits and not ahead:
        holds = {**pool.holds, ask.tag: Hold(ask.amount, now)}
        return replace(pool, holds=holds, waiters=live)
    if (
        noted is not None
        and len(live) == len(mine)
        and noted.amount == ask.amount
        and now - noted.seen_at < ask.wait_seconds / 3
    ):
        return Leave.QUEUED if fits else Leave.FULL
    waiter = Waiter(ask.created_at, ask.amount, now, since)
    return replace(pool, waiters={**live, ask.job_id: waiter})


def leave_queue(pool: QuotaPool, job_id: str) -> QuotaPool | Leave:
    """`job_id` no longer waits for room in `pool` (it is being canceled): its place in
    the queue goes to the jobs behind it at once, not once its wait runs out."""
    if job_id not in pool.waiters:
        return Leave.DONE
    return replace(pool, waiters={j: w for j, w in pool.waiters.items() if j != job_id})


def release_hold(pool: QuotaPool, tag: str, taken_at: float | None = None) -> QuotaPool | Leave:
    """The chunk `tag`'s batch ended, or it will not be created: its room is free. With
    `taken_at`, only the hold taken then (a sweep that found the chunk not in flight
    leaves one its next submitter has taken again since)."""
    held = pool.holds.get(tag)
    if held is None or (taken_at is not None and held.taken_at != taken_at):
        return Leave.DONE
    return replace(pool, holds={k: v for k, v in pool.holds.items() if k != tag})
