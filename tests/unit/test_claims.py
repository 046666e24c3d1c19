"""The claim rules (`domain/claims.py`) as a table: the specification of exactly-once.

How to read LEASES: one row per event, one column per state of the record's lease as I
(`ME`) see it at `NOW`. A cell is what the rule makes of the record: the row's verb when
it changes it (to exactly `Event.effect`), or why it leaves it (`Leave`):

- free: no lease on the record;
- mine: my lease, live; mine, expired: my lease, run out, and nobody took it over;
- held: another invocation's lease, live; expired: another's, run out (its holder is
  taken for dead);
- past: the record is past the step (planned, ended, ...): the lease does not matter.

A lease runs out at its `until` itself; the expired columns sit exactly there. Steps that
no lease guards (cancel, collect, finish, ...) act on records that carry no lease; their
rows show that a lease left on one would change nothing. STATES then covers what the
lease columns cannot: other record states and the conditions besides the lease.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from batchline.domain import claims
from batchline.domain.claims import Change, LeaseState, LeaseTerms, Leave
from batchline.domain.models import (
    BatchState,
    BatchTag,
    Chunk,
    ChunkState,
    CreateIntent,
    Hold,
    Job,
    JobOptions,
    JobState,
    Lease,
    ProviderBatch,
    ProviderLock,
    QuotaPool,
    Source,
    Waiter,
)
from batchline.domain.results import Tally

ME, OTHER = "me", "other"
NOW = 1_800_000_000.0
TERMS = LeaseTerms(60.0)
EXPIRY = datetime(2027, 1, 1, tzinfo=UTC)
COUNTS = {"lines": 3, "blank_lines": 0, "invalid": 0, "requests": 3}
TALLY = Tally(counts={"succeeded": 3}, input_tokens=30, output_tokens=15, cost_usd=0.123456789012)
BATCH = ProviderBatch("batch_1", BatchState.RUNNING, {"total": 3})
ENDED_BATCH = ProviderBatch("batch_1", BatchState.COMPLETED, {"total": 3, "completed": 3})
QUOTA_FAILED = ProviderBatch(
    "batch_1",
    BatchState.FAILED,
    {"total": 3},
    errors=("token_limit_exceeded: Enqueued token limit reached",),
)
ENDED_OTHER = ProviderBatch("batch_2", BatchState.COMPLETED, {"total": 3, "completed": 3})

LEASE_COLUMNS: dict[str, Lease | None] = {
    "free": None,
    "mine": Lease(ME, NOW + 30),
    "mine, expired": Lease(ME, NOW),
    "held": Lease(OTHER, NOW + 30),
    "expired": Lease(OTHER, NOW),
}
PAST = "past"


def job(state: JobState, **changes: Any) -> Job:
    base = Job(
        job_id="j",
        source=Source("in", "x.jsonl", "1", 100),
        options=JobOptions(),
        output_prefix="gs://out/x/j/",
        state=state,
        counts=COUNTS if state is not JobState.ACCEPTED else {},
        chunk_count=2 if state is not JobState.ACCEPTED else 0,
        created_at=NOW - 1000,
        updated_at=NOW - 100,
    )
    return replace(base, **changes)


def chunk(state: ChunkState, **changes: Any) -> Chunk:
    base = Chunk(
        job_id="j",
        index=0,
        provider="openai",
        model="gpt-4o-mini",
        request_count=3,
        payload_bytes=300,
        payload_uri="gs://work/jobs/j/chunks/0/input.jsonl",
        manifest_uri="gs://work/jobs/j/chunks/0/manifest.jsonl",
        state=state,
        updated_at=NOW - 100,
    )
    if state is ChunkState.SUBMITTING:
        base = replace(base, attempts=1, submit_started_at=NOW - 900)
    if state in (ChunkState.RUNNING, ChunkState.ENDED):
        base = replace(base, attempts=1, batch_id="batch_1", batch_state=BatchState.RUNNING)
    return replace(base, **changes)


@dataclass(frozen=True)
class Event:
    """One row: the rule as called by its service, what it makes of a record it changes,
    the record as it is when the step may run, and a record past the step."""

    verb: str
    rule: Callable[[Any], Any]
    effect: Callable[[Any], Any]
    at: Job | Chunk
    past: Job | Chunk


EVENTS: dict[str, Event] = {
    # ------------------------------------------------------------------ planning a job
    "take for plan": Event(
        "taken",
        lambda j: claims.take_for_plan(j, ME, NOW, TERMS),
        lambda j: replace(j, lease=Lease(ME, NOW + 60), updated_at=NOW),
        job(JobState.ACCEPTED),
        job(JobState.SUBMITTING),
    ),
    "renew the planning lease": Event(
        "renewed",
        lambda j: claims.renew_plan(j, ME, NOW, TERMS),
        lambda j: replace(j, lease=Lease(ME, NOW + 60), updated_at=NOW),
        job(JobState.ACCEPTED),
        job(JobState.SUBMITTING),
    ),
    # ------------------------------------------------------------------ advancing a job
    "take for advance": Event(
        "taken",
        lambda j: claims.take_for_advance(j, ME, NOW, TERMS),
        lambda j: replace(j, lease=Lease(ME, NOW + 60), advance_asked_at=None, updated_at=NOW),
        job(JobState.RUNNING),
        job(JobState.COLLECTING),
    ),
    "renew the advancing lease": Event(
        "renewed",
        lambda j: claims.renew_advance(j, ME, NOW, TERMS),
        lambda j: replace(j, lease=Lease(ME, NOW + 60), updated_at=NOW),
        job(JobState.SUBMITTING),
        job(JobState.COLLECTING),
    ),
    "release the advancing lease": Event(
        "released",
        lambda j: claims.release_advance(j, ME, NOW),
        lambda j: replace(j, lease=None, updated_at=NOW),
        job(JobState.RUNNING),
        job(JobState.SUCCEEDED),
    ),
    "ask the holder to go round again": Event(
        "asked",
        lambda j: claims.ask_advance(j, ME, NOW),
        lambda j: replace(j, advance_asked_at=NOW, updated_at=NOW),
        job(JobState.RUNNING),
        job(JobState.COLLECTING),
    ),
    "end my advance (nobody asked)": Event(
        "released",
        lambda j: claims.release_unless_asked(j, ME, NOW),
        lambda j: replace(j, lease=None, updated_at=NOW),
        job(JobState.SUBMITTING),
        job(JobState.SUCCEEDED),
    ),
    "end my advance (asked meanwhile)": Event(
        "kept, ask cleared",
        lambda j: claims.release_unless_asked(j, ME, NOW),
        lambda j: replace(j, advance_asked_at=None, updated_at=NOW),
        job(JobState.RUNNING, advance_asked_at=NOW - 5),
        job(JobState.COLLECTING, advance_asked_at=NOW - 5),
    ),
    "commit the plan": Event(
        "committed",
        lambda j: claims.commit_plan(j, ME, NOW, counts=COUNTS, chunk_count=2),
        lambda j: replace(
            j, state=JobState.SUBMITTING, lease=None, counts=COUNTS, chunk_count=2, updated_at=NOW
        ),
        job(JobState.ACCEPTED),
        job(JobState.SUBMITTING),
    ),
    "reject": Event(
        "rejected",
        lambda j: claims.reject(j, "the file is empty", NOW, EXPIRY),
        lambda j: replace(
            j,
            state=JobState.REJECTED,
            lease=None,
            error="the file is empty",
            ended_at=NOW,
            expire_at=EXPIRY,
            updated_at=NOW,
        ),
        job(JobState.ACCEPTED),
        job(JobState.SUBMITTING),
    ),
    # ------------------------------------------------------------------ submitting a chunk
    "take for submit": Event(
        "taken",
        lambda c: claims.take_for_submit(c, ME, NOW, TERMS),
        lambda c: replace(
            c,
            state=ChunkState.SUBMITTING,
            lease=Lease(ME, NOW + 60),
            attempts=c.attempts + 1,
            submit_started_at=c.submit_started_at or NOW,
            updated_at=NOW,
        ),
        chunk(ChunkState.SUBMITTING),
        chunk(ChunkState.RUNNING),
    ),
    "renew the submit lease": Event(
        "renewed",
        lambda c: claims.renew_submit(c, ME, NOW, TERMS),
        lambda c: replace(c, lease=Lease(ME, NOW + 60), updated_at=NOW),
        chunk(ChunkState.SUBMITTING),
        chunk(ChunkState.RUNNING),
    ),
    "release (a retryable error)": Event(
        "released",
        lambda c: claims.release_submit(c, ME, NOW),
        lambda c: replace(c, lease=Lease(ME, NOW), updated_at=NOW),
        chunk(ChunkState.SUBMITTING),
        chunk(ChunkState.RUNNING),
    ),
    "fail (refused for good)": Event(
        "failed",
        lambda c: claims.fail_submit(c, ME, "400: bad model", NOW),
        lambda c: replace(
            c, state=ChunkState.ENDED, lease=None, error="400: bad model", updated_at=NOW
        ),
        chunk(ChunkState.SUBMITTING),
        chunk(ChunkState.RUNNING),
    ),
    "quota full (create refused)": Event(
        "requeued",
        lambda c: claims.requeue_submit(c, ME, NOW, NOW + 60),
        lambda c: replace(
            c,
            state=ChunkState.PENDING,
            lease=None,
            not_before=NOW + 60,
            requeues=c.requeues + 1,
            updated_at=NOW,
        ),
        chunk(ChunkState.SUBMITTING),
        chunk(ChunkState.RUNNING),
    ),
    "batch failed for the quota": Event(
        "requeued",
        lambda c: claims.requeue_failed(c, QUOTA_FAILED, NOW, NOW + 60),
        lambda c: replace(
            c,
            state=ChunkState.PENDING,
            not_before=NOW + 60,
            requeues=c.requeues + 1,
            quota_refused=["batch_1"],
            batch_id=None,
            batch_state=None,
            batch_counts={},
            updated_at=NOW,
        ),
        chunk(ChunkState.RUNNING),
        chunk(ChunkState.ENDED),
    ),
    "adopted a batch failed for the quota": Event(
        "requeued",
        lambda c: claims.requeue_adopted(c, QUOTA_FAILED, NOW, NOW + 60),
        lambda c: replace(
            c,
            state=ChunkState.PENDING,
            lease=None,
            not_before=NOW + 60,
            requeues=c.requeues + 1,
            quota_refused=["batch_1"],
            updated_at=NOW,
        ),
        chunk(ChunkState.SUBMITTING),
        chunk(ChunkState.RUNNING),
    ),
    "input uploaded ahead": Event(
        "noted",
        lambda c: claims.note_upload(c, "file-up", NOW),
        lambda c: replace(c, uploaded_input="file-up", updated_at=NOW),
        chunk(ChunkState.PENDING),
        chunk(ChunkState.SUBMITTING),
    ),
    "nothing to adopt (canceling)": Event(
        "ended unsent",
        lambda c: claims.end_unsubmitted(c, ME, NOW),
        lambda c: replace(
            c,
            state=ChunkState.ENDED,
            lease=None,
            batch_state=BatchState.CANCELED,
            updated_at=NOW,
        ),
        chunk(ChunkState.SUBMITTING),
        chunk(ChunkState.RUNNING),
    ),
    "record the batch": Event(
        "recorded",
        lambda c: claims.record_batch(c, BATCH, NOW),
        lambda c: replace(
            c,
            state=ChunkState.RUNNING,
            lease=None,
            batch_id="batch_1",
            batch_state=BatchState.RUNNING,
            batch_counts={"total": 3},
            updated_at=NOW,
        ),
        chunk(ChunkState.SUBMITTING),
        chunk(ChunkState.RUNNING, batch_id="batch_0"),
    ),
    # ------------------------------------------------------------------ following a chunk
    "batch ended": Event(
        "ended",
        lambda c: claims.follow_batch(c, ENDED_BATCH, NOW),
        lambda c: replace(
            c,
            state=ChunkState.ENDED,
            batch_state=BatchState.COMPLETED,
            batch_counts={"total": 3, "completed": 3},
            updated_at=NOW,
        ),
        chunk(ChunkState.RUNNING),
        chunk(ChunkState.ENDED, batch_state=BatchState.COMPLETED),
    ),
    "sent again (its batch was another's)": Event(
        "pending",
        lambda c: claims.resend(c, "batch_1", NOW),
        lambda c: replace(
            c,
            state=ChunkState.PENDING,
            lease=None,
            submit_started_at=None,
            batch_id=None,
            batch_state=None,
            batch_counts={},
            error=None,
            updated_at=NOW,
        ),
        chunk(ChunkState.ENDED, batch_state=BatchState.COMPLETED, submit_started_at=NOW - 900),
        chunk(ChunkState.ENDED, batch_id="batch_9"),
    ),
    "given its own batch back": Event(
        "rebound",
        lambda c: claims.rebind(c, "batch_1", ENDED_OTHER, NOW),
        lambda c: replace(
            c,
            batch_id="batch_2",
            batch_state=BatchState.COMPLETED,
            batch_counts={"total": 3, "completed": 3},
            error=None,
            updated_at=NOW,
        ),
        chunk(ChunkState.ENDED, batch_state=BatchState.COMPLETED),
        chunk(ChunkState.ENDED, batch_id="batch_2"),
    ),
    "orphans found": Event(
        "noted",
        lambda c: claims.note_orphans(c, ["batch_7", "batch_1"]),
        lambda c: replace(c, orphans=[*c.orphans, "batch_7"]),
        chunk(ChunkState.RUNNING),
        chunk(ChunkState.RUNNING, orphans=["batch_7"]),
    ),
    "cancel a pending chunk": Event(
        "ended canceled",
        lambda c: claims.cancel_pending(c, NOW),
        lambda c: replace(
            c, state=ChunkState.ENDED, batch_state=BatchState.CANCELED, updated_at=NOW
        ),
        chunk(ChunkState.PENDING),
        chunk(ChunkState.SUBMITTING),
    ),
    # ------------------------------------------------------------------ a job's life after
    "cancel asked": Event(
        "asked",
        lambda j: claims.ask_cancel(j, NOW),
        lambda j: replace(j, cancel_requested_at=NOW, updated_at=NOW),
        job(JobState.RUNNING),
        job(JobState.SUCCEEDED),
    ),
    "every chunk sent": Event(
        "running",
        lambda j: claims.start_running(j, NOW),
        lambda j: replace(j, state=JobState.RUNNING, submitted_at=NOW, updated_at=NOW),
        job(JobState.SUBMITTING),
        job(JobState.RUNNING),
    ),
    "every chunk ended": Event(
        "collecting",
        lambda j: claims.start_collecting(j, NOW),
        lambda j: replace(
            j,
            state=JobState.COLLECTING,
            lease=None,
            submitted_at=j.submitted_at or NOW,
            collect_requested_at=NOW,
            updated_at=NOW,
        ),
        job(JobState.RUNNING, submitted_at=NOW - 500),
        job(JobState.COLLECTING),
    ),
    "collect ask sent": Event(
        "noted",
        lambda j: claims.collect_sent(j, NOW - 5, NOW),
        lambda j: replace(j, collect_sent_at=NOW),
        job(JobState.COLLECTING, collect_requested_at=NOW - 5),
        job(JobState.SUCCEEDED, collect_requested_at=NOW - 5),
    ),
    "collect not done in time": Event(
        "asked again",
        lambda j: claims.ask_collect_again(j, NOW, 600, 60),
        lambda j: replace(j, collect_requested_at=NOW, updated_at=NOW),
        job(JobState.COLLECTING, collect_requested_at=NOW - 600, collect_sent_at=NOW - 599),
        job(JobState.SUCCEEDED, collect_requested_at=NOW - 600),
    ),
    "reopen to send a chunk again": Event(
        "reopened",
        lambda j: claims.reopen_for_resend(j, NOW),
        lambda j: replace(j, state=JobState.RUNNING, collect_requested_at=None, updated_at=NOW),
        job(JobState.COLLECTING, collect_requested_at=NOW - 10),
        job(JobState.RUNNING),
    ),
    "reopen for a repair round": Event(
        "reopened",
        lambda j: claims.reopen_for_round(j, NOW, chunk_count=2, new_chunks=1),
        lambda j: replace(
            j, state=JobState.RUNNING, chunk_count=3, collect_requested_at=None, updated_at=NOW
        ),
        job(JobState.COLLECTING, collect_requested_at=NOW - 10),
        job(JobState.RUNNING, chunk_count=3),
    ),
    "finish": Event(
        "finished",
        lambda j: claims.finish(j, JobState.SUCCEEDED, NOW, tally=TALLY, expire_at=EXPIRY),
        lambda j: replace(
            j,
            state=JobState.SUCCEEDED,
            counts={**COUNTS, "succeeded": 3},
            usage={"input_tokens": 30, "output_tokens": 15},
            cost_usd=0.123456789,
            ended_at=NOW,
            expire_at=EXPIRY,
            updated_at=NOW,
        ),
        job(JobState.COLLECTING),
        job(JobState.PARTIAL),
    ),
    "job.completed sent": Event(
        "marked",
        lambda j: claims.mark_published(j),
        lambda j: replace(j, event_published=True),
        job(JobState.SUCCEEDED),
        job(JobState.SUCCEEDED, event_published=True),
    ),
    "job ended (retention)": Event(
        "stamped",
        lambda c: claims.stamp_expiry(c, EXPIRY),
        lambda c: replace(c, expire_at=EXPIRY),
        chunk(ChunkState.ENDED),
        chunk(ChunkState.ENDED, expire_at=EXPIRY),
    ),
}

DONE, HELD, NOT_MINE, FREE = Leave.DONE, Leave.HELD, Leave.NOT_MINE, Leave.FREE

# fmt: off
LEASES: dict[str, tuple[str, ...]] = {
    #                               free          mine          mine, expired held          expired       past
    # Planning: whoever holds a live lease plans; an expired planner is taken over.
    "take for plan":                ("taken",     "taken",      "taken",      HELD,         "taken",      DONE),
    # Advancing: one invocation at a time moves a job on; the others leave it.
    "take for advance":             ("taken",     "taken",      "taken",      HELD,         "taken",      DONE),
    "renew the advancing lease":    (NOT_MINE,    "renewed",    "renewed",    NOT_MINE,     NOT_MINE,     DONE),
    "release the advancing lease":  (NOT_MINE,    "released",   "released",   NOT_MINE,     NOT_MINE,     DONE),
    # Asked while another holds it: its holder goes round once more (free: take it).
    "ask the holder to go round again": (FREE,    FREE,         FREE,         "asked",      FREE,         DONE),
    # The holder gives the lease back in the same write that finds nobody asked.
    "end my advance (nobody asked)": (NOT_MINE,   "released",   "released",   NOT_MINE,     NOT_MINE,     DONE),
    "end my advance (asked meanwhile)": (NOT_MINE, "kept, ask cleared", "kept, ask cleared", NOT_MINE, NOT_MINE, DONE),
    "renew the planning lease":     (NOT_MINE,    "renewed",    "renewed",    NOT_MINE,     NOT_MINE,     DONE),
    "commit the plan":              (NOT_MINE,    "committed",  "committed",  NOT_MINE,     NOT_MINE,     DONE),
    # An unreadable file is unreadable for every planner.
    "reject":                       ("rejected",  "rejected",   "rejected",   "rejected",   "rejected",   DONE),
    # Submitting: a live lease, mine included, means someone is at it.
    "take for submit":              ("taken",     HELD,         "taken",      HELD,         "taken",      DONE),
    # A heartbeat renews a lease nobody took over, even run out; a taken one says stop.
    "renew the submit lease":       (NOT_MINE,    "renewed",    "renewed",    NOT_MINE,     NOT_MINE,     DONE),
    "release (a retryable error)":  (NOT_MINE,    "released",   "released",   NOT_MINE,     NOT_MINE,     DONE),
    "fail (refused for good)":      (NOT_MINE,    "failed",     "failed",     NOT_MINE,     NOT_MINE,     DONE),
    # The provider's quota was full: back to pending, to wait out a backoff.
    "quota full (create refused)":  (NOT_MINE,    "requeued",   "requeued",   NOT_MINE,     NOT_MINE,     DONE),
    "batch failed for the quota":   ("requeued",  "requeued",   "requeued",   "requeued",   "requeued",   DONE),
    "adopted a batch failed for the quota": ("requeued", "requeued", "requeued", "requeued", "requeued", DONE),
    # Uploaded while it waits for its quota: a pending chunk notes the first upload.
    "input uploaded ahead":         ("noted",     "noted",      "noted",      "noted",      "noted",      DONE),
    "nothing to adopt (canceling)": (NOT_MINE,    "ended unsent", "ended unsent", NOT_MINE, NOT_MINE,     DONE),
    # The first batch recorded wins, even from a submit that outlived its lease.
    "record the batch":             ("recorded",  "recorded",   "recorded",   "recorded",   "recorded",   DONE),
    # No lease guards the rest: the record's state does.
    "batch ended":                  ("ended",     "ended",      "ended",      "ended",      "ended",      DONE),
    # A collect that finds a chunk's batch holding another chunk's requests (mix-ups).
    "sent again (its batch was another's)": ("pending", "pending", "pending", "pending", "pending", DONE),
    "given its own batch back":     ("rebound",   "rebound",    "rebound",    "rebound",    "rebound",    DONE),
    "orphans found":                ("noted",     "noted",      "noted",      "noted",      "noted",      DONE),
    "cancel a pending chunk":       ("ended canceled", "ended canceled", "ended canceled", "ended canceled", "ended canceled", DONE),
    "cancel asked":                 ("asked",     "asked",      "asked",      "asked",      "asked",      DONE),
    "every chunk sent":             ("running",   "running",    "running",    "running",    "running",    DONE),
    "every chunk ended":            ("collecting", "collecting", "collecting", "collecting", "collecting", DONE),
    "collect ask sent":             ("noted",     "noted",      "noted",      "noted",      "noted",      DONE),
    "collect not done in time":     ("asked again", "asked again", "asked again", "asked again", "asked again", DONE),
    "reopen to send a chunk again": ("reopened",  "reopened",   "reopened",   "reopened",   "reopened",   DONE),
    "reopen for a repair round":    ("reopened",  "reopened",   "reopened",   "reopened",   "reopened",   DONE),
    "finish":                       ("finished",  "finished",   "finished",   "finished",   "finished",   DONE),
    "job.completed sent":           ("marked",    "marked",     "marked",     "marked",     "marked",     DONE),
    "job ended (retention)":        ("stamped",   "stamped",    "stamped",    "stamped",    "stamped",    DONE),
}
# fmt: on

COLUMNS = [*LEASE_COLUMNS, PAST]


def test_the_table_has_every_event_and_every_column() -> None:
    assert set(LEASES) == set(EVENTS)
    assert all(len(row) == len(COLUMNS) for row in LEASES.values())


def check(event: Event, before: Job | Chunk, expected: str) -> None:
    """The rule leaves `before` for the reason `expected` names, or changes it to
    exactly the event's effect."""
    outcome = event.rule(before)
    if isinstance(expected, Leave):
        assert outcome is expected
        return
    assert expected == event.verb, f"the table says {expected!r}, the event {event.verb!r}"
    assert not isinstance(outcome, Leave), f"left: {outcome}"
    assert outcome == event.effect(before)


@pytest.mark.parametrize(
    ("name", "column"),
    [(name, column) for name in LEASES for column in COLUMNS],
    ids=[f"{name} | {column}" for name in LEASES for column in COLUMNS],
)
def test_lease_state_by_event(name: str, column: str) -> None:
    event = EVENTS[name]
    expected = LEASES[name][COLUMNS.index(column)]
    before = event.past if column == PAST else replace(event.at, lease=LEASE_COLUMNS[column])
    check(event, before, expected)


# What the lease columns cannot show: other states of the record, and the conditions
# besides the lease.
STATES = [
    pytest.param(
        "take for submit", chunk(ChunkState.PENDING), "taken", id="a pending chunk is taken"
    ),
    pytest.param(
        "take for submit", chunk(ChunkState.ENDED), DONE, id="an ended chunk is not taken"
    ),
    pytest.param("take for plan", job(JobState.REJECTED), DONE, id="a rejected job is not planned"),
    pytest.param(
        "ask the holder to go round again",
        job(JobState.RUNNING, lease=Lease(OTHER, NOW + 30), advance_asked_at=NOW - 1),
        DONE,
        id="a holder asked already is not asked twice",
    ),
    pytest.param(
        "take for advance",
        job(JobState.RUNNING, lease=Lease(OTHER, NOW), advance_asked_at=NOW - 1),
        "taken",
        id="taking over clears an ask its dead holder never saw (the taker goes round)",
    ),
    pytest.param("reject", job(JobState.REJECTED), DONE, id="a job is rejected once"),
    pytest.param("cancel asked", job(JobState.ACCEPTED), "asked", id="cancel while planning"),
    pytest.param("cancel asked", job(JobState.COLLECTING), "asked", id="cancel while collecting"),
    pytest.param(
        "cancel asked",
        job(JobState.RUNNING, cancel_requested_at=NOW - 5),
        DONE,
        id="cancel asked twice keeps the first time",
    ),
    pytest.param("cancel asked", job(JobState.CANCELED), DONE, id="cancel of a canceled job"),
    pytest.param(
        "every chunk ended",
        job(JobState.SUBMITTING),
        "collecting",
        id="every chunk ended while submitting",
    ),
    pytest.param(
        "collect not done in time",
        job(JobState.COLLECTING, collect_requested_at=NOW - 599, collect_sent_at=NOW - 599),
        Leave.NOT_DUE,
        id="collect sent less than retry_seconds ago",
    ),
    pytest.param(
        "collect not done in time",
        job(JobState.COLLECTING, collect_requested_at=NOW - 60),
        "asked again",
        id="collect asked a lease ago and never sent: its sender died",
    ),
    pytest.param(
        "collect not done in time",
        job(JobState.COLLECTING, collect_requested_at=NOW - 59),
        Leave.NOT_DUE,
        id="collect asked less than a lease ago, not sent yet",
    ),
    pytest.param(
        "collect not done in time",
        job(JobState.COLLECTING, collect_requested_at=NOW - 60, collect_sent_at=NOW - 700),
        "asked again",
        id="an older ask was sent, this one not",
    ),
    pytest.param(
        "collect ask sent",
        job(JobState.COLLECTING, collect_requested_at=NOW),
        DONE,
        id="a newer ask is not marked by the older one's message",
    ),
    pytest.param(
        "collect ask sent",
        job(JobState.COLLECTING, collect_requested_at=NOW - 5, collect_sent_at=NOW - 4),
        DONE,
        id="an ask is marked sent once",
    ),
    pytest.param(
        "take for advance",
        job(JobState.SUBMITTING),
        "taken",
        id="a submitting job is advanced",
    ),
    pytest.param(
        "take for advance", job(JobState.ACCEPTED), DONE, id="an accepted job is planned instead"
    ),
    pytest.param(
        "reopen to send a chunk again",
        job(JobState.COLLECTING, cancel_requested_at=NOW - 5),
        "reopened",
        id="a job being canceled is reopened too (its chunk is then canceled, not sent)",
    ),
    pytest.param(
        "sent again (its batch was another's)",
        chunk(ChunkState.RUNNING),
        DONE,
        id="only an ended chunk is sent again",
    ),
    pytest.param(
        "given its own batch back",
        chunk(ChunkState.ENDED, batch_id=None),
        DONE,
        id="a chunk that recorded no batch is not given one (its lines are collected)",
    ),
    pytest.param(
        "input uploaded ahead",
        chunk(ChunkState.PENDING, uploaded_input="file-first"),
        DONE,
        id="a second upload of the same chunk loses (its uploader discards it)",
    ),
    pytest.param(
        "input uploaded ahead",
        chunk(ChunkState.PENDING, not_before=NOW + 30, requeues=1),
        "noted",
        id="a chunk waiting out a quota backoff notes its upload",
    ),
    pytest.param(
        "input uploaded ahead",
        chunk(ChunkState.RUNNING),
        DONE,
        id="a chunk whose batch runs does not note a late upload",
    ),
    pytest.param(
        "batch failed for the quota",
        chunk(ChunkState.RUNNING, uploaded_input="file-up"),
        "requeued",
        id="a chunk sent back by the quota keeps its uploaded input (it feeds the next batch)",
    ),
    pytest.param(
        "quota full (create refused)",
        chunk(ChunkState.SUBMITTING, lease=Lease(ME, NOW + 30), uploaded_input="file-up"),
        "requeued",
        id="a create refused for the quota keeps the uploaded input",
    ),
    pytest.param(
        "input uploaded ahead",
        chunk(ChunkState.ENDED),
        DONE,
        id="an ended chunk does not note an upload",
    ),
    pytest.param(
        "orphans found",
        chunk(ChunkState.RUNNING, orphans=["batch_7"]),
        DONE,
        id="an orphan is noted once, and the chunk's own batch never",
    ),
    pytest.param(
        "collect not done in time",
        job(JobState.COLLECTING, collect_requested_at=None),
        "asked again",
        id="collect never asked",
    ),
    pytest.param(
        "reopen for a repair round",
        job(JobState.COLLECTING, chunk_count=3),
        DONE,
        id="another collect started a round already",
    ),
    pytest.param(
        "reopen for a repair round",
        job(JobState.COLLECTING, cancel_requested_at=NOW - 5),
        Leave.CANCELED,
        id="no repair round once a cancel is asked",
    ),
    pytest.param(
        "finish", job(JobState.RUNNING), DONE, id="finish after a repair round reopened the job"
    ),
    pytest.param(
        "batch ended",
        chunk(ChunkState.RUNNING, batch_id="batch_0"),
        DONE,
        id="news of a batch the chunk did not record",
    ),
    pytest.param(
        "batch ended",
        chunk(ChunkState.SUBMITTING),
        DONE,
        id="news of a batch before the chunk recorded it",
    ),
    pytest.param(
        "record the batch", chunk(ChunkState.PENDING), DONE, id="no record without a lease taken"
    ),
    pytest.param(
        "batch failed for the quota",
        chunk(ChunkState.RUNNING, batch_id="batch_0"),
        DONE,
        id="news of a batch the chunk no longer records",
    ),
]


@pytest.mark.parametrize(("name", "before", "expected"), STATES)
def test_record_state_by_event(name: str, before: Job | Chunk, expected: str) -> None:
    check(EVENTS[name], before, expected)


def test_commit_of_a_plan_without_chunks_goes_to_collecting_and_asks_for_it() -> None:
    planning = job(JobState.ACCEPTED, lease=Lease(ME, NOW + 30))
    committed = claims.commit_plan(planning, ME, NOW, counts=COUNTS, chunk_count=0)
    assert isinstance(committed, Job)
    assert committed.state is JobState.COLLECTING
    assert (committed.chunk_count, committed.collect_requested_at) == (0, NOW)


def test_a_running_batch_keeps_the_chunk_running() -> None:
    running = chunk(ChunkState.RUNNING)
    progressed = ProviderBatch("batch_1", BatchState.RUNNING, {"total": 3, "completed": 1})
    followed = claims.follow_batch(running, progressed, NOW)
    assert isinstance(followed, Chunk)
    assert followed.state is ChunkState.RUNNING
    assert followed.batch_counts == {"total": 3, "completed": 1}
    ended = claims.record_batch(chunk(ChunkState.SUBMITTING), ENDED_BATCH, NOW)
    assert isinstance(ended, Chunk) and ended.state is ChunkState.ENDED


@pytest.mark.parametrize(
    ("before", "noted"),
    [
        (
            chunk(ChunkState.RUNNING, batch_state=BatchState.QUEUED, submit_started_at=NOW - 7201),
            True,
        ),
        # queued, but not for long enough
        (
            chunk(ChunkState.RUNNING, batch_state=BatchState.QUEUED, submit_started_at=NOW - 7199),
            False,
        ),
        # running: its queue is behind it
        (
            chunk(ChunkState.RUNNING, batch_state=BatchState.RUNNING, submit_started_at=NOW - 9999),
            False,
        ),
        # noted once: a second tick leaves it (and only cancels again while it is queued)
        (
            chunk(
                ChunkState.RUNNING,
                batch_state=BatchState.QUEUED,
                submit_started_at=NOW - 9999,
                error="queue_timeout: still queued",
            ),
            False,
        ),
        (
            chunk(ChunkState.ENDED, batch_state=BatchState.QUEUED, submit_started_at=NOW - 9999),
            False,
        ),
    ],
)
def test_a_batch_queued_past_the_job_limit_is_noted_once(before: Chunk, noted: bool) -> None:
    after = claims.give_up_queue(before, NOW, max_queue_hours=2)
    if not noted:
        assert after is Leave.DONE
        return
    assert isinstance(after, Chunk)
    assert (after.error or "").startswith(claims.QUEUE_TIMEOUT)
    assert "max_queue_hours 2" in (after.error or "")
    assert after.state is ChunkState.RUNNING and after.batch_id == before.batch_id


# ------------------------------------------------------------------ create locks
# A provider's create lock (Anthropic: one create in flight per deployment). Its columns
# are the lease columns of a lock with no intent open, and two with one open: mine (I
# declared it), and another's whose holder is taken for dead (the crash in the create
# gap). TAG is the open intent's chunk; a release names the intent it settles.

TAG = BatchTag("j", 0)
INTENT = CreateIntent("j", 0, 3, NOW - 10, "msgbatch_mark", NOW - 500)
MY_INTENT = CreateIntent("j", 1, 3, NOW, "msgbatch_mark", NOW - 500)
LOCK_COLUMNS: dict[str, ProviderLock] = {
    **{name: ProviderLock("anthropic", lease) for name, lease in LEASE_COLUMNS.items()},
    "mine, intent open": ProviderLock("anthropic", Lease(ME, NOW + 30), INTENT),
    "expired, intent open": ProviderLock("anthropic", Lease(OTHER, NOW), INTENT),
}
LOCK_EVENTS: dict[str, tuple[str, Callable[[ProviderLock], Any], Callable[[Any], Any]]] = {
    "take": (
        "taken",
        lambda lock: claims.take_lock(lock, ME, NOW, TERMS),
        lambda lock: replace(lock, lease=Lease(ME, NOW + 60)),
    ),
    "renew": (
        "renewed",
        lambda lock: claims.renew_lock(lock, ME, NOW, TERMS),
        lambda lock: replace(lock, lease=Lease(ME, NOW + 60)),
    ),
    "declare my intent": (
        "declared",
        lambda lock: claims.declare_intent(lock, ME, MY_INTENT),
        lambda lock: replace(lock, intent=MY_INTENT),
    ),
    "settle the open intent": (
        "settled",
        lambda lock: claims.settle_intent(lock, ME, NOW, TAG),
        lambda lock: replace(lock, intent=None),
    ),
    "release": (
        "released",
        lambda lock: claims.release_lock(lock, ME, NOW),
        lambda lock: replace(lock, lease=None, intent=None),
    ),
    "release, settling the intent": (
        "released",
        lambda lock: claims.release_lock(lock, ME, NOW, TAG),
        lambda lock: replace(lock, lease=None, intent=None),
    ),
}
UNSETTLED = Leave.UNSETTLED

# fmt: off
LOCKS: dict[str, tuple[str, ...]] = {
    #                               free        mine        mine, exp.  held      expired     mine+intent  expired+intent
    # Taken over with its intent kept: the new holder settles it before anything else.
    "take":                         ("taken",   "taken",    "taken",    HELD,     "taken",    "taken",     "taken"),
    "renew":                        (NOT_MINE,  "renewed",  "renewed",  NOT_MINE, NOT_MINE,   "renewed",   NOT_MINE),
    # Nothing is created over an open intent, nor without the lock.
    "declare my intent":            (NOT_MINE,  "declared", "declared", NOT_MINE, NOT_MINE,   UNSETTLED,   NOT_MINE),
    "settle the open intent":       (NOT_MINE,  DONE,       DONE,       NOT_MINE, NOT_MINE,   "settled",   NOT_MINE),
    # The lock is given back only once its intent is accounted for.
    "release":                      (NOT_MINE,  "released", "released", NOT_MINE, NOT_MINE,   UNSETTLED,   NOT_MINE),
    "release, settling the intent": (NOT_MINE,  "released", "released", NOT_MINE, NOT_MINE,   "released",  NOT_MINE),
}
# fmt: on


@pytest.mark.parametrize(
    ("name", "column"),
    [(name, column) for name in LOCKS for column in LOCK_COLUMNS],
    ids=[f"{name} | {column}" for name in LOCKS for column in LOCK_COLUMNS],
)
def test_create_lock_by_event(name: str, column: str) -> None:
    assert set(LOCKS) == set(LOCK_EVENTS)
    verb, rule, effect = LOCK_EVENTS[name]
    before = LOCK_COLUMNS[column]
    expected = LOCKS[name][list(LOCK_COLUMNS).index(column)]
    outcome = rule(before)
    if isinstance(expected, Leave):
        assert outcome is expected
        return
    assert expected == verb
    assert outcome == effect(before)


def test_an_intent_settled_by_another_chunk_s_name_stays_open() -> None:
    lock = LOCK_COLUMNS["mine, intent open"]
    assert claims.settle_intent(lock, ME, NOW, BatchTag("j", 1)) is DONE
    assert claims.release_lock(lock, ME, NOW, BatchTag("other-job", 0)) is UNSETTLED


def test_a_crash_in_the_create_gap_is_settled_by_the_lock_s_next_holder() -> None:
    """The story the create lock tells: "a" declares and dies after the create; "b",
    another chunk's submitter, waits while the lock is live, then takes it over with the
    intent, and may declare its own only after settling that one."""
    lock = claims.take_lock(ProviderLock("anthropic"), "a", NOW, TERMS)
    assert isinstance(lock, ProviderLock)
    intent = CreateIntent("j", 0, 3, NOW + 1, None, None)
    lock = claims.declare_intent(lock, "a", intent)
    assert isinstance(lock, ProviderLock) and lock.intent == intent
    assert claims.take_lock(lock, "b", NOW + 59, TERMS) is HELD  # "a" creates
    taken = claims.take_lock(lock, "b", NOW + 60, TERMS)  # "a" is taken for dead
    assert isinstance(taken, ProviderLock) and taken.intent == intent
    mine = CreateIntent("j", 1, 3, NOW + 61, None, None)
    assert claims.declare_intent(taken, "b", mine) is UNSETTLED
    assert claims.release_lock(taken, "a", NOW + 61, intent.tag) is NOT_MINE  # too late
    settled = claims.settle_intent(taken, "b", NOW + 61, intent.tag)
    assert isinstance(settled, ProviderLock) and settled.intent is None
    declared = claims.declare_intent(settled, "b", mine)
    assert isinstance(declared, ProviderLock) and declared.intent == mine


# ------------------------------------------------------------------ leases


@pytest.mark.parametrize(
    ("lease", "state"),
    [
        (None, LeaseState.FREE),
        (Lease(ME, NOW + 0.001), LeaseState.MINE),
        (Lease(ME, NOW), LeaseState.MINE_EXPIRED),
        (Lease(OTHER, NOW + 0.001), LeaseState.HELD),
        (Lease(OTHER, NOW), LeaseState.EXPIRED),
        (Lease(OTHER, NOW - 3600), LeaseState.EXPIRED),
    ],
)
def test_a_lease_runs_out_at_its_until(lease: Lease | None, state: LeaseState) -> None:
    assert claims.lease_state(lease, ME, NOW) is state
    assert state.live == (state in (LeaseState.MINE, LeaseState.HELD))


def test_lease_terms_set_expiry_and_renewal() -> None:
    terms = LeaseTerms(900.0)
    assert terms.lease(ME, NOW) == Lease(ME, NOW + 900)
    assert not terms.renewal_due(NOW, NOW + 299.9)
    assert terms.renewal_due(NOW, NOW + 300)


def test_expiry_follows_retention() -> None:
    assert claims.expiry(NOW, None) is None
    assert claims.expiry(NOW, 7) == datetime.fromtimestamp(NOW + 7 * 86400, tz=UTC)


@pytest.mark.parametrize(
    "record",
    [chunk(ChunkState.PENDING), chunk(ChunkState.RUNNING), chunk(ChunkState.ENDED)]
    + [replace(chunk(ChunkState.SUBMITTING), lease=lease) for lease in LEASE_COLUMNS.values()],
    ids=lambda c: f"{c.state} {c.lease}",
)
def test_a_chunk_is_due_exactly_when_it_can_be_taken_for_submit(record: Chunk) -> None:
    taken = claims.take_for_submit(record, ME, NOW, TERMS)
    assert claims.submit_due(record, ME, NOW) == isinstance(taken, Chunk)


# ------------------------------------------------------------------ a story


def test_two_submitters_one_chunk_one_batch() -> None:
    """The table in action: a submitter dies mid-submit; the next takes over once its
    lease has run out, and only one batch is ever recorded."""
    pending = chunk(ChunkState.PENDING)
    first = claims.take_for_submit(pending, "a", NOW, TERMS)
    assert isinstance(first, Chunk) and first.attempts == 1
    assert claims.take_for_submit(first, "b", NOW + 59, TERMS) is Leave.HELD
    second = claims.take_for_submit(first, "b", NOW + 60, TERMS)  # "a" is taken for dead
    assert isinstance(second, Chunk)
    assert (second.attempts, second.submit_started_at, second.lease) == (
        2,
        NOW,
        Lease("b", NOW + 120),
    )
    assert claims.fail_submit(second, "a", "late", NOW + 61) is Leave.NOT_MINE
    recorded = claims.record_batch(second, BATCH, NOW + 62)
    assert isinstance(recorded, Chunk) and recorded.batch_id == "batch_1"
    late = ProviderBatch("batch_2", BatchState.RUNNING, {"total": 3})
    assert claims.record_batch(recorded, late, NOW + 63) is Leave.DONE


# ------------------------------------------------------------------ Change


def test_change_hands_the_store_a_new_record_or_none_and_remembers_why() -> None:
    planning = job(JobState.ACCEPTED, lease=Lease(OTHER, NOW + 30))
    take = Change(claims.take_for_plan, ME, NOW, TERMS)
    assert take(planning) is None
    assert (take.seen, take.left) == (planning, Leave.HELD)
    free = replace(planning, lease=None)
    taken = take(free)
    assert taken is not None and taken.lease == Lease(ME, NOW + 60)
    assert (take.seen, take.left) == (free, None)


# ---------------------------------------------------------------------------- quota pools
#
# One pool per quota, across every job: a chunk's hold (`job/index`) is reserved before its
# batch is created and released when the batch ends. Limit 1000 below; job "j" asks.

LIMIT, WAIT = 1000, 600.0


def ask(amount: int = 100, tag: str = "j/0", created_at: float = NOW - 1000) -> claims.Ask:
    return claims.Ask(tag, "j", created_at, amount, LIMIT, WAIT)


def pool(holds: dict[str, int] | None = None, **waiters: Waiter) -> QuotaPool:
    return QuotaPool(
        "openai/gpt-4o-mini",
        {tag: Hold(amount, NOW - 500) for tag, amount in (holds or {}).items()},
        dict(waiters),
    )


ADMITTED, WAITS = "admitted", "noted waiting"
OLDER, YOUNGER = NOW - 5000, NOW - 10


# fmt: off
RESERVE = [
    # (pool before,                                    ask,             outcome)
    pytest.param(pool(),                               ask(),           ADMITTED, id="room: admitted"),
    pytest.param(pool({"x/0": 950}),                   ask(),           WAITS, id="no room: the job is noted waiting"),
    pytest.param(pool({"x/0": 950}, j=Waiter(NOW - 1000, 100, NOW - 5)), ask(), Leave.FULL,
                 id="no room, and noted already: nothing written"),
    pytest.param(pool({"x/0": 900}),                   ask(),           ADMITTED, id="exactly full after: admitted"),
    pytest.param(pool(),                               ask(5000),       ADMITTED, id="larger than the quota: alone in an empty pool"),
    pytest.param(pool({"x/0": 1}),                     ask(5000),       WAITS, id="larger than the quota: not beside another"),
    pytest.param(pool({}, x=Waiter(OLDER, 100, NOW - 5)), ask(),        WAITS, id="an older job waits first"),
    pytest.param(pool({}, x=Waiter(YOUNGER, 100, NOW - 5)), ask(),      WAITS,
                 id="a younger job already waiting goes before a job asking afresh"),
    pytest.param(pool({}, x=Waiter(YOUNGER, 100, NOW - 5, NOW - 50), j=Waiter(NOW - 1000, 100, NOW - 5, NOW - 50)),
                 ask(), ADMITTED, id="of two waiting as long, the older job goes first"),
    pytest.param(pool({}, x=Waiter(YOUNGER, 100, NOW - 5, NOW - 60), j=Waiter(NOW - 1000, 100, NOW - 5, NOW - 50)),
                 ask(), Leave.QUEUED, id="a younger job that has waited longer goes first"),
    pytest.param(pool({"x/0": 100}, x=Waiter(OLDER, 100, NOW - 5)), ask(), ADMITTED,
                 id="an older job with more in flight goes after"),
    pytest.param(pool({"j/1": 100}, x=Waiter(YOUNGER, 100, NOW - 5)), ask(), WAITS,
                 id="a younger job with less in flight goes first"),
    pytest.param(pool({}, x=Waiter(OLDER, 100, NOW - WAIT)), ask(),     ADMITTED,
                 id="a job that stopped asking lost its place"),
    pytest.param(pool({}, x=Waiter(OLDER, 100, NOW - 5), j=Waiter(NOW - 1000, 100, NOW - 5)), ask(),
                 Leave.QUEUED, id="room, but behind another job, noted already"),
]
# fmt: on


@pytest.mark.parametrize(("before", "request_", "outcome"), RESERVE)
def test_reserve(before: QuotaPool, request_: claims.Ask, outcome: str) -> None:
    after = claims.reserve(before, request_, NOW)
    if isinstance(outcome, Leave):
        assert after is outcome
        return
    assert isinstance(after, QuotaPool)
    if outcome == ADMITTED:
        assert after.holds == {**before.holds, "j/0": Hold(request_.amount, NOW)}
        assert "j" not in after.waiters  # its wait is over
    else:
        assert after.holds == before.holds
        noted = before.waiters.get("j")
        since = noted.waiting_since if noted is not None else NOW  # its place is kept
        assert after.waiters["j"] == Waiter(request_.created_at, request_.amount, NOW, since)
    stale = [k for k, w in before.waiters.items() if w.seen_at + WAIT <= NOW]
    assert not set(stale) & set(after.waiters)  # a job that stopped asking is dropped


def test_a_chunk_s_next_submitter_takes_its_hold_again_never_a_second() -> None:
    held = pool({"j/0": 100, "x/0": 900})  # full, but the room is the chunk's own
    after = claims.reserve(held, ask(), NOW)
    assert isinstance(after, QuotaPool)
    assert after.in_use == 1000
    assert after.holds["j/0"] == Hold(100, NOW)  # taken again now: a sweep leaves it


def test_release_frees_the_hold_once_and_only_the_one_seen() -> None:
    held = pool({"j/0": 100, "x/0": 200})
    freed = claims.release_hold(held, "j/0")
    assert isinstance(freed, QuotaPool) and freed.holds == {"x/0": Hold(200, NOW - 500)}
    assert claims.release_hold(freed, "j/0") is Leave.DONE
    assert claims.release_hold(held, "j/0", NOW - 1) is Leave.DONE  # taken again since
    assert isinstance(claims.release_hold(held, "j/0", NOW - 500), QuotaPool)


def test_a_job_leaving_the_queue_gives_its_place_up_and_nothing_else() -> None:
    queued = pool({"x/0": 900}, j=Waiter(OLDER, 100, NOW - 5), y=Waiter(YOUNGER, 50, NOW - 5))
    left = claims.leave_queue(queued, "j")
    assert isinstance(left, QuotaPool)
    assert (left.holds, set(left.waiters)) == (queued.holds, {"y"})
    assert claims.leave_queue(left, "j") is Leave.DONE  # not queued (again): no write


def test_a_chunk_backing_off_is_not_due_until_its_time() -> None:
    waiting = chunk(ChunkState.PENDING, not_before=NOW + 1)
    assert not claims.submit_due(waiting, ME, NOW)
    assert claims.take_for_submit(waiting, ME, NOW, TERMS) is Leave.HELD
    assert claims.submit_due(replace(waiting, not_before=NOW), ME, NOW)


def test_the_job_notes_why_it_waits_once() -> None:
    running = job(JobState.RUNNING)
    noted = claims.note_waiting(running, "queued: 1M of 2M")
    assert isinstance(noted, Job) and noted.waiting == "queued: 1M of 2M"
    assert claims.note_waiting(noted, "queued: 1M of 2M") is Leave.DONE
    assert claims.note_waiting(job(JobState.COLLECTING), "queued") is Leave.DONE
    collecting = claims.start_collecting(noted, NOW)
    assert isinstance(collecting, Job) and collecting.waiting is None
