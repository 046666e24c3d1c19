"""Holding leases: heartbeats renew them while a holder works, a takeover stops the
holder, a lost race is no failure, and a duplicate leaves a job it finds at work alone."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change, LeaseTerms
from batchline.domain.models import Chunk, ChunkState, Job, JobOptions, JobState, Lease, Source
from batchline.errors import Contention, ProviderError, RetryableError
from batchline.services import advance, submitting
from batchline.services.leases import Keeper, LeaseLost, contended
from batchline.services.poll import poll
from batchline.services.submit import handle_object_finalized
from batchline_tools.memory import MemoryJobStore, RecordingPublisher

from .fakes import FakeClock, make_deps
from .test_pipeline import line, upload

#: Bounds a wait that ends as soon as the heartbeat thread has done what it must.
WAIT = 30.0


def wait_until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, "the heartbeat did not act"
        time.sleep(0.01)


def with_heartbeat(deps: Deps, seconds: float = 10.0, max_hold: float = 900.0) -> Deps:
    return replace(
        deps,
        settings=replace(deps.settings, heartbeat_seconds=seconds, max_hold_seconds=max_hold),
    )


def planning_job(deps: Deps, clock: FakeClock, owner: str = "me") -> Job:
    event = upload(deps, line() + b"\n")
    job = Job(
        job_id="j",
        source=Source(event.bucket, event.name, event.generation, event.size),
        options=JobOptions(),
        output_prefix="gs://out/x/j/",
        lease=Lease(owner, clock.now() + 60),
    )
    assert deps.store.create_job(job)
    return job


def renew_plan(deps: Deps, owner: str = "me") -> Callable[[], bool]:
    def renew() -> bool:
        change = Change(claims.renew_plan, owner, deps.clock.now(), LeaseTerms(60))
        return deps.store.update_job("j", change) is not None

    return renew


def test_a_heartbeat_renews_while_the_holder_works_and_never_after() -> None:
    base, _, clock = make_deps()
    deps = with_heartbeat(base)
    planning_job(deps, clock)
    with Keeper(deps, "planning j", [renew_plan(deps)]) as keeper:
        for beat in range(1, 4):
            clock.advance(10)  # a heartbeat's worth of the holder's slow work
            wait_until(lambda beat=beat: keeper.beats == beat)  # type: ignore[misc]
            job = deps.store.get_job("j")
            assert job is not None and job.lease == Lease("me", clock.now() + 60)
        assert not keeper.lost
        keeper.check()
    clock.advance(100)
    time.sleep(0.5)  # a stopped keeper would have had time to renew: it must not
    job = deps.store.get_job("j")
    assert job is not None and job.lease is not None and job.lease.until < clock.now()


def test_a_renewal_that_finds_the_lease_taken_over_stops_the_holder() -> None:
    base, _, clock = make_deps()
    deps = with_heartbeat(base)
    planning_job(deps, clock)
    with Keeper(deps, "planning j", [renew_plan(deps)]) as keeper:
        deps.store.update_job("j", lambda j: replace(j, lease=Lease("other", clock.now() + 60)))
        clock.advance(10)
        wait_until(lambda: keeper.lost)
        with pytest.raises(LeaseLost):
            keeper.check()
    job = deps.store.get_job("j")
    assert job is not None and job.lease is not None and job.lease.owner == "other"


def test_a_holder_is_renewed_for_max_hold_seconds_at_most() -> None:
    base, _, clock = make_deps()
    deps = with_heartbeat(base, max_hold=30)
    planning_job(deps, clock)
    with Keeper(deps, "planning j", [renew_plan(deps)]) as keeper:
        clock.advance(10)
        wait_until(lambda: keeper.beats == 1)
        clock.advance(25)  # 35 s held: past max_hold_seconds
        wait_until(lambda: keeper.lost)
        assert keeper.beats == 1


def test_a_renewal_that_fails_is_tried_again_at_the_next_tick() -> None:
    base, _, clock = make_deps()
    deps = with_heartbeat(base)
    planning_job(deps, clock)
    failures = [RetryableError("Firestore unavailable")]

    def flaky() -> bool:
        if failures:
            raise failures.pop()
        return renew_plan(deps)()

    with Keeper(deps, "planning j", [flaky]) as keeper:
        clock.advance(10)
        wait_until(lambda: keeper.beats == 1)
        assert not keeper.lost and not failures


def test_heartbeats_are_off_at_zero() -> None:
    deps, _, clock = make_deps()
    assert deps.settings.heartbeat_every == 0
    with Keeper(deps, "x", [lambda: pytest.fail("renewed")]) as keeper:
        clock.advance(1000)
        time.sleep(0.3)
    assert keeper.beats == 0


def test_a_heartbeat_is_at_least_three_a_lease() -> None:
    deps, _, _ = make_deps()
    settings = replace(deps.settings, lease_seconds=15, heartbeat_seconds=10)
    assert settings.heartbeat_every == 5


def test_a_lost_race_is_none_not_a_failure() -> None:
    def losing() -> Job | None:
        raise Contention("updating job j: the transaction kept losing")

    assert contended(losing) is None
    with pytest.raises(RetryableError):
        contended(lambda: (_ for _ in ()).throw(RetryableError("down")))  # others still raise


class CountingStore(MemoryJobStore):
    """Counts the transactions a service asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.updates = 0

    def update_job(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.updates += 1
        return super().update_job(*args, **kwargs)

    def update_chunk(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.updates += 1
        return super().update_chunk(*args, **kwargs)


def test_a_duplicate_leaves_a_job_another_invocation_advances_without_a_transaction() -> None:
    deps, provider, clock = make_deps(max_requests=1)
    store = CountingStore()
    deps = replace(deps, store=store)
    event = upload(deps, line() + b"\n" + line())
    job = handle_object_finalized(deps, event)
    assert job is not None and job.state is JobState.RUNNING
    held = Change(claims.take_for_advance, "advancer", clock.now(), LeaseTerms(60))
    taken = store.update_job(job.job_id, held)
    assert taken is not None
    store.updates = 0
    for _ in range(5):  # five copies of the trigger, and ticks, each reading the job
        # (with news, an OpenAI webhook's message, see test_poll_fanout, it would ask)
        assert handle_object_finalized(deps, event) is not None
        current = store.get_job(job.job_id)
        assert current is not None
        assert advance.advance_job(deps, current, "a-tick", clock.now() + 60) == current
    assert store.updates == 0  # no news: the copies and ticks read the job and leave it
    assert len(provider.batches) == 2


def failing_records(
    store: MemoryJobStore, failures: list[Exception]
) -> Callable[..., Chunk | None]:
    """`store.update_chunk`, except that a change recording a batch raises the next of
    `failures` (a store that fails right after the provider accepted the batch)."""
    real = store.update_chunk

    def update_chunk(
        job_id: str, index: int, change: Callable[[Chunk], Chunk | None]
    ) -> Chunk | None:
        current = real(job_id, index, lambda c: c)
        assert current is not None
        trial = change(current)
        if failures and trial is not None and trial.batch_id != current.batch_id:
            raise failures.pop()
        return real(job_id, index, change)

    return update_chunk


def test_a_record_that_fails_is_retried_before_the_claim_is_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(submitting, "RECORD_BACKOFF_SECONDS", 0.0)
    deps, provider, _ = make_deps()
    assert isinstance(deps.store, MemoryJobStore)
    failures: list[Exception] = [RetryableError("Firestore unavailable")] * 3
    monkeypatch.setattr(deps.store, "update_chunk", failing_records(deps.store, failures))
    job = handle_object_finalized(deps, upload(deps, line() + b"\n"))
    assert job is not None
    [chunk] = deps.store.get_chunks(job.job_id)
    assert (chunk.state, chunk.batch_id) == (ChunkState.RUNNING, "batch_0")
    assert failures == [] and len(provider.batches) == 1


def test_a_record_that_keeps_failing_keeps_the_claim_for_the_next_holder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(submitting, "RECORD_BACKOFF_SECONDS", 0.0)
    deps, provider, clock = make_deps()
    assert isinstance(deps.store, MemoryJobStore)
    failures: list[Exception] = [
        RetryableError("Firestore unavailable")
    ] * submitting.RECORD_ATTEMPTS
    monkeypatch.setattr(deps.store, "update_chunk", failing_records(deps.store, failures))
    with pytest.raises(RetryableError):
        handle_object_finalized(deps, upload(deps, line() + b"\n"))
    [job] = deps.store.active_jobs()
    [chunk] = deps.store.get_chunks(job.job_id)
    assert chunk.state is ChunkState.SUBMITTING and chunk.lease is not None
    assert chunk.lease.until > clock.now()  # not given back: the batch may be recorded yet
    clock.advance(61)
    poll(deps)  # the next holder finds the batch by its tag and adopts it
    [chunk] = deps.store.get_chunks(job.job_id)
    assert (chunk.state, chunk.batch_id) == (ChunkState.RUNNING, "batch_0")
    assert len(provider.batches) == 1


def test_a_submit_lease_given_back_after_a_retryable_failure_is_not_renewed_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The holder gives its lease back (it ends now) so that the next try need not wait
    for it; the heartbeat must have stopped first, or a renewal landing after the release
    holds the chunk for another whole lease."""
    base, provider, clock = make_deps()
    deps = with_heartbeat(base)
    assert isinstance(deps.store, MemoryJobStore)
    real = deps.store.update_chunk
    given_back: list[float] = []

    def update_chunk(job_id: str, index: int, change: Callable[[Chunk], Chunk | None]) -> Any:
        updated = real(job_id, index, change)
        in_submit = updated is not None and updated.state is ChunkState.SUBMITTING
        lease = updated.lease if updated is not None else None
        if in_submit and lease is not None and lease.until == clock.now():
            given_back.append(clock.now())
            clock.advance(10)  # a heartbeat is due now: a keeper still running renews
            time.sleep(0.5)  # (one that stopped has had time to, and must not)
        return updated

    monkeypatch.setattr(deps.store, "update_chunk", update_chunk)
    provider.fail_create = ProviderError("HTTP 503", retryable=True, status=503)
    with pytest.raises(ProviderError):
        handle_object_finalized(deps, upload(deps, line() + b"\n"))
    [job] = deps.store.active_jobs()
    [chunk] = deps.store.get_chunks(job.job_id)
    assert len(given_back) == 1 and chunk.state is ChunkState.SUBMITTING
    assert chunk.lease is not None and chunk.lease.until == given_back[0]
    poll(deps)  # so the next tick sends it, without waiting for a lease to run out
    [chunk] = deps.store.get_chunks(job.job_id)
    assert (chunk.state, chunk.batch_id) == (ChunkState.RUNNING, "batch_0")


def test_a_poll_that_dies_before_asking_for_collect_is_noticed_within_a_lease() -> None:
    deps, provider, clock = make_deps()
    job = handle_object_finalized(deps, upload(deps, line() + b"\n"))
    assert job is not None
    provider.end()
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)

    def dies(topic: str, message: dict[str, object], **attributes: str) -> None:
        raise SystemExit("the poll dies before the collect message goes out")

    real_publish = publisher.publish
    publisher.publish = dies  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        poll(deps)
    publisher.publish = real_publish  # type: ignore[method-assign]
    collecting = deps.store.get_job(job.job_id)
    assert collecting is not None and collecting.state is JobState.COLLECTING
    clock.advance(deps.settings.lease_seconds - 1)
    poll(deps)
    assert publisher.on("batchline-collect") == []
    clock.advance(1)
    poll(deps)
    assert publisher.on("batchline-collect") == [{"job_id": job.job_id}]
    again = deps.store.get_job(job.job_id)
    assert again is not None and again.collect_sent_at == clock.now()
    clock.advance(deps.settings.lease_seconds)
    poll(deps)  # sent: the collect now gets collect_retry_seconds
    assert len(publisher.on("batchline-collect")) == 1
