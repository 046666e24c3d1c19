"""FirestoreJobStore against Google's Firestore emulator: claims, round trips, transactions.

Each test runs in a project of its own, so documents never leak between tests.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from batchline.adapters.firestore import CONTENTION, FirestoreJobStore, chunk_doc_id, make_client
from batchline.domain.models import (
    BatchState,
    BatchTag,
    Chunk,
    ChunkState,
    Job,
    JobOptions,
    JobState,
    Lease,
    ProviderLock,
    Source,
)
from batchline.errors import Contention, RetryableError
from batchline_tools.local.stack import wipe_firestore

pytestmark = pytest.mark.integration

NOW = 1_800_000_000.0
RACERS = 8


@pytest.fixture
def project(firestore_emulator: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"bl-fs-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", name)
    yield name
    wipe_firestore(firestore_emulator, name)


@pytest.fixture
def new_store(project: str) -> Callable[[], FirestoreJobStore]:
    """A store on a client of its own (one per simulated function invocation)."""
    return lambda: FirestoreJobStore(make_client(project))


@pytest.fixture
def store(new_store: Callable[[], FirestoreJobStore]) -> FirestoreJobStore:
    return new_store()


def make_job(job_id: str = "job-1", state: JobState = JobState.ACCEPTED, **changes: Any) -> Job:
    job = Job(
        job_id=job_id,
        source=Source(bucket="in", name="path/x.jsonl", generation="1", size=10),
        options=JobOptions(),
        output_prefix=f"gs://out/path/x/{job_id}/",
        state=state,
        created_at=NOW,
        updated_at=NOW,
    )
    return replace(job, **changes)


# Firestore keeps microseconds: a TTL timestamp round-trips exactly at that precision.
EXPIRE_AT = datetime(2027, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def full_job(job_id: str = "job-full") -> Job:
    """A job with every field set to a non-default value."""
    return Job(
        job_id=job_id,
        source=Source(
            bucket="in-bucket",
            name="team/ünïcode input.jsonl.gz",
            generation="1712345678901234",
            size=123_456_789,
            md5="1B2M2Y8AsgTpgAmY7PhCfg==",
            content_encoding="gzip",
        ),
        options=JobOptions(
            model="openai/gpt-4.1-mini",
            labels={"team": "search", "env": "dev"},
            schema="Invoice",
            response_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
            max_repair_attempts=2,
            max_cost_usd=12.5,
            notify_url="https://hooks.example.com/batchline",
            max_retries=3,
            fallback=("anthropic/claude-haiku-4-5", "vertex/gemini-2.5-flash"),
            max_queue_hours=6.5,
            candidates=["openai/gpt-4o-mini", "vertex/gemini-2.5-flash"],
            prefer="speed",
        ),
        output_prefix=f"gs://out-bucket/team/ünïcode input/{job_id}/",
        origin="api",
        idempotency_key="idem-42",
        request_digest="sha256:9f86d081884c7d65",
        state=JobState.RUNNING,
        lease=Lease(owner="poll-7f3a", until=NOW + 90.25),
        counts={"succeeded": 7, "failed": 2, "invalid": 1, "expired": 0},
        chunk_count=3,
        usage={"input_tokens": 1_000_000_000_000, "output_tokens": 42},
        cost_usd=0.012345,
        error="chunk 2: HTTP 500",
        created_at=NOW,
        updated_at=NOW + 1.5,
        submitted_at=NOW + 0.75,
        collect_requested_at=NOW + 2.0,
        collect_sent_at=NOW + 2.25,
        cancel_requested_at=NOW + 2.5,
        ended_at=NOW + 3.0,
        event_published=True,
        notify_pending=True,
        notify={"published_at": NOW + 3.5, "attempts": 2, "last_status": 500},
        expire_at=EXPIRE_AT,
        version=7,
        waiting="queued: 1.9M of 2M enqueued tokens in use for openai/gpt-4.1-mini",
        advance_asked_at=NOW - 3,
    )


def defaulted(record: Any, bare: Any) -> list[str]:
    """The fields of `record` that equal those of `bare` (a record with defaults)."""
    return [f.name for f in fields(record) if getattr(record, f.name) == getattr(bare, f.name)]


def make_chunk(job_id: str, index: int, **changes: Any) -> Chunk:
    chunk = Chunk(
        job_id=job_id,
        index=index,
        provider="openai",
        model="gpt-4.1-mini",
        request_count=10 + index,
        payload_bytes=1000 + index,
        payload_uri=f"gs://work/jobs/{job_id}/chunks/{index}/input.jsonl",
        manifest_uri=f"gs://work/jobs/{job_id}/chunks/{index}/manifest.jsonl",
    )
    return replace(chunk, **changes)


TRIGGER_RETRIES = 5


def race(n: int, action: Callable[[int], Any]) -> list[Any]:
    """Run `action(i)` for i in range(n) on n threads released together; each racer's
    result, or the exception it raised.

    The emulator resolves the lock conflicts of simultaneous transactions with a 2 s lock
    timeout (ABORTED), and racers retrying in lockstep can exhaust the client's 5 attempts
    (~10 s): see `test_transaction_that_cannot_commit_is_a_retryable_error`.
    """
    barrier = threading.Barrier(n)
    outcomes: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        # A racer whose transaction could not commit is retried later, as its trigger
        # would retry it; otherwise every racer can lose in a bad round and none win.
        for _ in range(TRIGGER_RETRIES):
            try:
                outcomes[i] = action(i)
                return
            except RetryableError as exc:
                outcomes[i] = exc
                time.sleep(random.uniform(0.05, 0.5))
            except Exception as exc:
                outcomes[i] = exc
                return

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a racer hung"
    return outcomes


def split_outcomes(outcomes: list[Any]) -> list[tuple[int, Any]]:
    """The winners; every other racer must have got None, or failed to commit (which the
    trigger retries; see `race`)."""
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            assert isinstance(outcome, RetryableError), repr(outcome)
    return [
        (i, o) for i, o in enumerate(outcomes) if o is not None and not isinstance(o, Exception)
    ]


# --------------------------------------------------------------------------- jobs


def test_create_job_claims_once(store: FirestoreJobStore) -> None:
    first = make_job("job-dup", counts={"first": 1})
    assert store.create_job(first) is True
    assert store.create_job(replace(first, counts={"second": 2})) is False
    assert store.get_job("job-dup") == first  # the duplicate changed nothing


def test_get_job_of_unknown_id_is_none(store: FirestoreJobStore) -> None:
    assert store.get_job("job-nope") is None


def test_job_round_trip_keeps_every_field(store: FirestoreJobStore) -> None:
    job = full_job()
    bare = Job(job.job_id, Source("b", "n", "1", 0), JobOptions(), "gs://out/")
    assert defaulted(job, bare) == ["job_id"]  # every other field is set
    assert store.create_job(job)
    stored = store.get_job(job.job_id)
    assert stored == job
    assert stored is not None
    assert type(stored.state) is JobState and type(stored.lease) is Lease
    assert type(stored.cost_usd) is float and type(stored.usage["input_tokens"]) is int

    # Through a transaction: identical apart from the version, which goes up by one.
    updated = store.update_job(job.job_id, lambda current: current)
    again = store.get_job(job.job_id)
    assert updated == again
    assert again is not None
    assert again.version == job.version + 1
    assert replace(again, version=job.version) == job


def test_chunk_round_trip_keeps_every_field(store: FirestoreJobStore) -> None:
    job = make_job("job-c")
    chunk = make_chunk(
        "job-c",
        3,
        state=ChunkState.RUNNING,
        lease=Lease("submit-1", NOW + 60.5),
        submit_started_at=NOW + 0.5,
        attempts=2,
        batch_id="batch_abc",
        batch_state=BatchState.EXPIRED,
        batch_counts={"total": 13, "completed": 11, "failed": 2},
        error="expired",
        updated_at=NOW + 1,
        webhook_ids=["msg_2", "msg_1"],
        expire_at=EXPIRE_AT,
        round=1,
        round_of=0,
        round_reason="failover",
        orphans=["batch_dup"],
        input_tokens=123_456,
        not_before=NOW + 30.5,
        requeues=2,
        quota_refused=["batch_over"],
        uploaded_input="file-abc",
        requests_uri="gs://work/jobs/job-c/requests/01/0000000004.jsonl",
    )
    bare = Chunk("job-c", 3, "", "", 0, 0, "", "")
    assert defaulted(chunk, bare) == ["job_id", "index"]  # every other field is set
    assert store.create_job(job)
    assert store.update_job("job-c", lambda j: j.to(JobState.SUBMITTING, NOW), [chunk])
    [stored] = store.get_chunks("job-c")
    assert stored == chunk
    assert type(stored.batch_state) is BatchState and type(stored.state) is ChunkState


def test_update_job_returning_none_writes_nothing(store: FirestoreJobStore) -> None:
    job = make_job("job-none")
    assert store.create_job(job)
    seen: list[Job] = []

    def change(current: Job) -> Job | None:
        seen.append(current)
        return None

    assert store.update_job("job-none", change, [make_chunk("job-none", 0)]) is None
    assert seen == [job]  # the change saw the stored record
    assert store.get_job("job-none") == job  # version not bumped, nothing written
    assert store.get_chunks("job-none") == []  # and no chunk created


def test_update_job_of_unknown_job_creates_nothing(store: FirestoreJobStore) -> None:
    calls: list[Job] = []

    def change(job: Job) -> Job:
        calls.append(job)
        return job

    assert store.update_job("job-ghost", change, [make_chunk("job-ghost", 0)]) is None
    assert calls == []
    assert store.get_job("job-ghost") is None
    assert store.get_chunks("job-ghost") == []


def test_update_job_creates_chunks_with_the_job_change(store: FirestoreJobStore) -> None:
    assert store.create_job(make_job("job-plan"))
    chunks = [make_chunk("job-plan", i) for i in range(3)]
    updated = store.update_job(
        "job-plan", lambda j: j.to(JobState.SUBMITTING, NOW + 1, chunk_count=3), chunks
    )
    assert updated is not None
    assert (updated.state, updated.chunk_count, updated.version) == (JobState.SUBMITTING, 3, 1)
    assert store.get_job("job-plan") == updated
    assert store.get_chunks("job-plan") == chunks


def test_update_job_is_all_or_nothing(store: FirestoreJobStore) -> None:
    """A chunk that cannot be written rolls the job change back too."""
    job = make_job("job-atomic")
    assert store.create_job(job)
    good = make_chunk("job-atomic", 0)
    bad = make_chunk("job-atomic", 1, batch_counts={"total": object()})  # not storable
    with pytest.raises((TypeError, ValueError)):
        store.update_job("job-atomic", lambda j: j.to(JobState.SUBMITTING, NOW), [good, bad])
    assert store.get_job("job-atomic") == job
    assert store.get_chunks("job-atomic") == []


def test_update_job_race_has_one_winner(
    store: FirestoreJobStore, new_store: Callable[[], FirestoreJobStore]
) -> None:
    """Eight planners race to move the job and create their chunks: one wins, and only
    the winner's chunks exist."""
    assert store.create_job(make_job("job-race"))
    stores = [new_store() for _ in range(RACERS)]

    def plan(i: int) -> Job | None:
        owner = f"planner-{i}"

        def change(job: Job) -> Job | None:
            if job.state is not JobState.ACCEPTED:
                return None
            return job.to(JobState.SUBMITTING, NOW, lease=Lease(owner, NOW + 60), chunk_count=2)

        chunks = [make_chunk("job-race", n, error=owner) for n in range(2)]
        return stores[i].update_job("job-race", change, chunks)

    winners = split_outcomes(race(RACERS, plan))
    assert len(winners) == 1
    [(index, won)] = winners
    stored = store.get_job("job-race")
    assert stored == won
    assert stored is not None
    assert stored.lease == Lease(f"planner-{index}", NOW + 60)
    assert stored.state is JobState.SUBMITTING and stored.version == 1
    assert [c.error for c in store.get_chunks("job-race")] == [f"planner-{index}"] * 2


# --------------------------------------------------------------------------- chunks


def test_update_chunk_race_has_one_lease_holder(
    store: FirestoreJobStore, new_store: Callable[[], FirestoreJobStore]
) -> None:
    assert store.create_job(make_job("job-lease"))
    assert store.update_job(
        "job-lease", lambda j: j.to(JobState.SUBMITTING, NOW), [make_chunk("job-lease", 0)]
    )
    stores = [new_store() for _ in range(RACERS)]

    def take_lease(i: int) -> Chunk | None:
        owner = f"submitter-{i}"

        def change(chunk: Chunk) -> Chunk | None:
            if chunk.state is not ChunkState.PENDING:
                return None
            return chunk.to(
                ChunkState.SUBMITTING,
                NOW,
                lease=Lease(owner, NOW + 300),
                submit_started_at=NOW,
                attempts=chunk.attempts + 1,
            )

        return stores[i].update_chunk("job-lease", 0, change)

    winners = split_outcomes(race(RACERS, take_lease))
    assert len(winners) == 1
    [(index, won)] = winners
    [stored] = store.get_chunks("job-lease")
    assert stored == won
    assert stored.lease == Lease(f"submitter-{index}", NOW + 300)
    assert (stored.state, stored.attempts) == (ChunkState.SUBMITTING, 1)


def test_transaction_that_cannot_commit_is_a_retryable_error(
    store: FirestoreJobStore, project: str
) -> None:
    """Another transaction holds the chunk for longer than the client's 5 attempts last
    (each ends in the emulator's 2 s lock timeout, ABORTED): the caller must get a
    RetryableError, so that functions raise and the trigger redelivers (and the API
    answers 503), and nothing is written. Takes ~10 s."""
    from google.cloud import firestore

    chunk = make_chunk("job-held", 0)
    assert store.create_job(make_job("job-held"))
    assert store.update_job("job-held", lambda j: j.to(JobState.SUBMITTING, NOW), [chunk])
    db = make_client(project)
    ref = db.collection("jobs").document("job-held").collection("chunks").document("00000")
    holding, release = threading.Event(), threading.Event()

    @firestore.transactional
    def hold(transaction: Any) -> None:
        ref.get(transaction=transaction)
        holding.set()
        release.wait(30)

    blocker = threading.Thread(target=lambda: hold(db.transaction()))
    blocker.start()
    aborted, given_up = CONTENTION.aborted, CONTENTION.given_up
    try:
        assert holding.wait(10)
        with pytest.raises(Contention):  # a RetryableError
            store.update_chunk(
                "job-held", 0, lambda c: c.to(ChunkState.SUBMITTING, NOW, lease=Lease("x", 1.0))
            )
    finally:
        release.set()
        blocker.join(30)
    assert store.get_chunks("job-held") == [chunk]
    # Every aborted attempt is counted, for logs and tests to read.
    assert CONTENTION.aborted - aborted >= 2 and CONTENTION.given_up == given_up + 1


def test_update_chunk_of_missing_chunk_is_none(store: FirestoreJobStore) -> None:
    assert store.create_job(make_job("job-nochunk"))
    calls: list[Chunk] = []

    def change(chunk: Chunk) -> Chunk:
        calls.append(chunk)
        return chunk

    assert store.update_chunk("job-nochunk", 0, change) is None
    assert calls == []
    assert store.get_chunks("job-nochunk") == []


def test_update_chunk_returning_none_writes_nothing(store: FirestoreJobStore) -> None:
    chunk = make_chunk("job-keep", 0)
    assert store.create_job(make_job("job-keep"))
    assert store.update_job("job-keep", lambda j: j.to(JobState.SUBMITTING, NOW), [chunk])
    assert store.update_chunk("job-keep", 0, lambda c: None) is None
    assert store.get_chunks("job-keep") == [chunk]


def test_get_chunks_sorted_by_index_beyond_ten(store: FirestoreJobStore, project: str) -> None:
    assert store.create_job(make_job("job-many"))
    order = [7, 11, 0, 10, 2, 12, 1, 9, 3, 8, 4, 6, 5]  # 13 chunks, written out of order
    chunks = {i: make_chunk("job-many", i) for i in order}
    assert store.update_job(
        "job-many", lambda j: j.to(JobState.SUBMITTING, NOW), [chunks[i] for i in order]
    )
    assert [c.index for c in store.get_chunks("job-many")] == list(range(13))
    assert store.get_chunks("job-many") == [chunks[i] for i in range(13)]
    assert store.get_chunks("job-other") == []

    # The document ids are zero-padded, so Firestore's own (lexicographic) order is the
    # index order too: "00010" after "00009", not after "00001".
    raw = make_client(project).collection("jobs").document("job-many").collection("chunks")
    ids = [doc.id for doc in raw.stream()]
    assert ids == [chunk_doc_id(i) for i in range(13)]
    assert ids[10] == "00010"


def test_active_jobs_are_the_non_terminal_ones(store: FirestoreJobStore) -> None:
    for state in JobState:
        assert store.create_job(make_job(f"job-{state}", state))
    # A job that moves from active to terminal drops out.
    assert store.update_job(
        "job-collecting", lambda j: replace(j, state=JobState.COLLECTING, error="x")
    )
    assert store.create_job(make_job("job-late", JobState.COLLECTING))
    assert store.update_job("job-late", lambda j: j.to(JobState.SUCCEEDED, NOW + 5))

    active = store.active_jobs()
    by_id = {job.job_id: job for job in active}
    assert len(by_id) == len(active)
    assert set(by_id) == {"job-accepted", "job-submitting", "job-running", "job-collecting"}
    assert all(not job.state.terminal for job in active)
    assert by_id["job-collecting"].error == "x"  # whole records, the current version
    assert by_id["job-collecting"].version == 1


def test_batch_recorded_by_finds_the_chunk_across_jobs(store: FirestoreJobStore) -> None:
    for job_id in ("job-a", "job-b"):
        store.create_job(make_job(job_id))
        chunks = [
            make_chunk(job_id, i, provider="anthropic", batch_id=f"msgbatch_{job_id}_{i}")
            for i in range(3)
        ]
        chunks.append(make_chunk(job_id, 3, provider="anthropic"))  # not submitted yet
        store.update_job(job_id, lambda j: j, new_chunks=chunks)
    assert store.batch_recorded_by("msgbatch_job-b_2") == BatchTag("job-b", 2)
    assert store.batch_recorded_by("msgbatch_job-a_0") == BatchTag("job-a", 0)
    assert store.batch_recorded_by("msgbatch_unknown") is None
    store.update_chunk("job-a", 3, lambda c: replace(c, batch_id="msgbatch_late"))
    assert store.batch_recorded_by("msgbatch_late") == BatchTag("job-a", 3)


# --------------------------------------------------------------------------- create locks


def test_a_create_lock_never_written_is_free_and_its_race_has_one_holder(
    store: FirestoreJobStore, new_store: Callable[[], FirestoreJobStore]
) -> None:
    from batchline.domain import claims
    from batchline.domain.claims import Change, LeaseTerms
    from batchline.domain.models import CreateIntent

    assert store.get_lock("anthropic") == ProviderLock("anthropic")
    stores = [new_store() for _ in range(RACERS)]

    def take(i: int) -> ProviderLock | None:
        change = Change(claims.take_lock, f"submitter-{i}", NOW, LeaseTerms(60))
        return stores[i].update_lock("anthropic", change)

    winners = split_outcomes(race(RACERS, take))
    assert len(winners) == 1
    [(index, won)] = winners
    assert store.get_lock("anthropic") == won
    intent = CreateIntent("job-a", 2, 3, NOW, "msgbatch_mark", NOW - 5.25)
    declared = store.update_lock(
        "anthropic", Change(claims.declare_intent, f"submitter-{index}", intent)
    )
    assert declared is not None and store.get_lock("anthropic") == declared  # round trip
    assert store.get_lock("openai") == ProviderLock("openai")  # one lock per provider


# --------------------------------------------------------------------------- quota pools


def test_a_quota_pool_never_holds_more_than_its_limit_however_many_race(
    store: FirestoreJobStore, new_store: Callable[[], FirestoreJobStore]
) -> None:
    from batchline.domain import claims
    from batchline.domain.claims import Ask, Change
    from batchline.domain.models import QuotaPool

    key = "openai/gpt-4.1-mini"  # a `/` in the key: the document id has none
    assert store.get_pool(key) == QuotaPool(key)
    stores = [new_store() for _ in range(RACERS)]

    def reserve(i: int) -> QuotaPool | None:
        ask = Ask(f"job-{i}/0", f"job-{i}", NOW - i, 30, 100, 600.0)
        return stores[i].update_pool(key, Change(claims.reserve, ask, NOW))

    race(RACERS, reserve)
    pool = store.get_pool(key)
    assert len(pool.holds) == 3 and pool.in_use == 90  # 100 fits three of 30
    assert set(pool.waiters) <= {f"job-{i}" for i in range(RACERS)} - {
        t.split("/")[0] for t in pool.holds
    }
    tag = next(iter(pool.holds))
    freed = store.update_pool(key, Change(claims.release_hold, tag))
    assert freed is not None and store.get_pool(key) == freed and freed.in_use == 60
    assert store.get_pool("openai/gpt-4o") == QuotaPool("openai/gpt-4o")  # one per quota
