"""Admission control through the services on in-memory ports: chunks held against their
provider's quota across jobs, admitted fairly, sent back with a backoff when the provider
says no, and the crash gaps of each new step."""

from __future__ import annotations

import time
from dataclasses import replace

import orjson
import pytest

from batchline.bootstrap import Deps
from batchline.config import quota_policies
from batchline.domain import claims
from batchline.domain.claims import Change
from batchline.domain.models import BatchState, ChunkState, JobState, hold_key
from batchline.domain.quotas import parse_quotas
from batchline.errors import ProviderError
from batchline.services import advance, cancel
from batchline.services.poll import poll
from batchline.services.submit import handle_object_finalized
from batchline_tools.memory import MemoryJobStore

from .fakes import CrashAfterSubmit, FakeClock, FakeProvider, make_deps
from .test_pipeline import finish, line, upload

POOL = "openai/gpt-4o-mini"
TOKENS = 8  # one "hi" request, as planning estimates it (tiktoken, with overheads)


def quota_deps(tokens: int, max_requests: int = 1000) -> tuple[Deps, FakeProvider, FakeClock]:
    """Deps whose gpt-4o-mini quota is `tokens` enqueued tokens."""
    deps, provider, clock = make_deps(max_requests)
    quotas = parse_quotas(
        orjson.dumps({POOL: {"enqueued_tokens": tokens}}).decode(), quota_policies()
    )
    settings = replace(
        deps.settings, quotas=quotas, quota_backoff_seconds=30, quota_backoff_max_seconds=100
    )
    return replace(deps, settings=settings), provider, clock


def submit(deps: Deps, lines: int, name: str) -> str:
    data = b"\n".join(line(custom_id=f"{name}-{i}") for i in range(lines))
    job = handle_object_finalized(deps, upload(deps, data, name=f"{name}.jsonl"))
    assert job is not None
    return job.job_id


def states(deps: Deps, job_id: str) -> list[ChunkState]:
    return [c.state for c in deps.store.get_chunks(job_id)]


def in_use(deps: Deps) -> int:
    return deps.store.get_pool(POOL).in_use


def end_batch(
    provider: FakeProvider,
    batch_id: str,
    state: BatchState = BatchState.COMPLETED,
    errors: tuple[str, ...] = (),
) -> None:
    fake = provider.batches[batch_id]
    fake.batch = replace(fake.batch, state=state, errors=errors)


def test_chunks_are_cut_to_fit_the_quota_alone() -> None:
    deps, _, _ = quota_deps(2 * TOKENS)
    job_id = submit(deps, 5, "big")
    chunks = deps.store.get_chunks(job_id)
    assert [c.request_count for c in chunks] == [2, 2, 1]
    assert [c.input_tokens for c in chunks] == [2 * TOKENS, 2 * TOKENS, TOKENS]


def test_a_request_over_the_whole_quota_alone_is_invalid_not_sent_forever() -> None:
    """No chunk could hold it: sent, its batch would fail for the quota every time, and
    hold the pool empty for itself each time it was admitted."""
    deps, provider, _ = quota_deps(3 * TOKENS)
    long = [{"role": "user", "content": "many words " * 40}]
    data = b"\n".join([line(custom_id="a"), line(custom_id="b", messages=long), line()])
    job = handle_object_finalized(deps, upload(deps, data, name="over.jsonl"))
    assert job is not None
    chunks = deps.store.get_chunks(job.job_id)
    assert [c.request_count for c in chunks] == [2]
    assert all(c.input_tokens is not None and c.input_tokens <= 3 * TOKENS for c in chunks)
    provider.end()
    final, lines = finish(deps, job.job_id)
    assert [x["status"] for x in lines] == ["succeeded", "invalid", "succeeded"]
    error = lines[1]["error"]
    assert isinstance(error, dict)
    message = str(error["message"])
    assert message.startswith("line 2: line: estimated ")
    assert (
        f"one {POOL} batch may hold at most {3 * TOKENS} (its quota, BATCHLINE_QUOTAS)" in message
    )
    assert final.counts["invalid"] == 1


def test_never_more_in_flight_than_the_quota_across_jobs() -> None:
    deps, provider, _ = quota_deps(2 * TOKENS, max_requests=1)
    first, second = submit(deps, 2, "a"), submit(deps, 2, "b")
    poll(deps)
    assert len(provider.batches) == 2 and in_use(deps) == 2 * TOKENS
    assert states(deps, first) == [ChunkState.RUNNING, ChunkState.RUNNING]
    assert states(deps, second) == [ChunkState.PENDING, ChunkState.PENDING]
    waiting = deps.store.get_job(second)
    assert waiting is not None
    assert waiting.waiting == f"queued: 16 of 16 enqueued tokens in use for {POOL}"
    end_batch(provider, "batch_0")
    poll(deps)  # the ended batch's room goes to the job with nothing in flight
    assert len(provider.batches) == 3 and in_use(deps) == 2 * TOKENS
    assert states(deps, second) == [ChunkState.RUNNING, ChunkState.PENDING]


def test_a_big_job_holds_a_small_one_back_for_one_batch_at_most() -> None:
    deps, provider, _ = quota_deps(2 * TOKENS, max_requests=1)
    big = submit(deps, 6, "big")
    poll(deps)
    small = submit(deps, 1, "small")  # came later: its plan found no room
    assert states(deps, small) == [ChunkState.PENDING]
    poll(deps)  # small is noted waiting, big's third chunk is refused behind it
    end_batch(provider, "batch_0")  # one of big's batches ends
    poll(deps)
    assert states(deps, small) == [ChunkState.RUNNING]
    assert states(deps, big).count(ChunkState.RUNNING) == 1  # big waits its turn
    assert in_use(deps) == 2 * TOKENS
    provider.end()
    for _ in range(6):
        poll(deps)
        provider.end()
    final, lines = finish(deps, big)
    assert final.state is JobState.SUCCEEDED and len(lines) == 6


def test_a_create_refused_for_the_quota_waits_and_loses_nothing() -> None:
    deps, provider, clock = quota_deps(1000)
    provider.fail_create = ProviderError("HTTP 429: queue full", retryable=True, status=429)
    job_id = submit(deps, 3, "a")
    [chunk] = deps.store.get_chunks(job_id)
    assert (chunk.state, chunk.not_before, chunk.requeues) == (
        ChunkState.PENDING,
        clock.now() + 30,
        1,
    )
    assert in_use(deps) == 0  # its hold was given back
    poll(deps)
    assert provider.batches == {}  # not before its backoff
    job = deps.store.get_job(job_id)
    after = time.strftime("%H:%M:%S UTC", time.gmtime(clock.now() + 30))
    assert job is not None
    assert job.waiting == f"queued: the provider said {POOL} was full; sent again after {after}"
    clock.advance(30)
    poll(deps)
    provider.end()
    final, lines = finish(deps, job_id)
    assert final.state is JobState.SUCCEEDED
    assert [r["status"] for r in lines] == ["succeeded"] * 3


@pytest.mark.parametrize(("retry_after", "waits"), [(5.0, 5), (0.0, 1), (10**6, 100), (None, 30)])
def test_a_create_refused_with_a_retry_after_goes_again_when_the_provider_said(
    retry_after: float | None, waits: float
) -> None:
    """At least a second, at most the longest backoff (100 s here); none said: our own
    backoff (30 s here)."""
    deps, provider, clock = quota_deps(1000)
    provider.fail_create = ProviderError(
        "HTTP 429: queue full", retryable=True, status=429, retry_after=retry_after
    )
    job_id = submit(deps, 1, "a")
    [chunk] = deps.store.get_chunks(job_id)
    assert (chunk.state, chunk.not_before) == (ChunkState.PENDING, clock.now() + waits)
    clock.advance(waits - 0.5)
    poll(deps)
    assert provider.batches == {}
    clock.advance(0.5)
    poll(deps)
    assert states(deps, job_id) == [ChunkState.RUNNING]


def test_a_batch_failed_for_the_quota_is_sent_again_never_adopted() -> None:
    deps, provider, clock = quota_deps(1000)
    job_id = submit(deps, 3, "a")
    end_batch(
        provider,
        "batch_0",
        BatchState.FAILED,
        ("token_limit_exceeded: Enqueued token limit reached",),
    )
    poll(deps)
    [chunk] = deps.store.get_chunks(job_id)
    assert (chunk.state, chunk.quota_refused, chunk.batch_id) == (
        ChunkState.PENDING,
        ["batch_0"],
        None,
    )
    assert in_use(deps) == 0
    clock.advance(31)
    poll(deps)  # found by its tag, the failed batch is not taken for this chunk's
    [chunk] = deps.store.get_chunks(job_id)
    assert (chunk.state, chunk.batch_id) == (ChunkState.RUNNING, "batch_1")
    end_batch(provider, "batch_1")
    final, lines = finish(deps, job_id)
    assert final.state is JobState.SUCCEEDED
    assert [r["status"] for r in lines] == ["succeeded"] * 3


def test_the_backoff_doubles_and_is_capped() -> None:
    deps, provider, clock = quota_deps(1000)
    waits = []
    job_id = submit(deps, 1, "a")
    for n in range(4):
        end_batch(provider, f"batch_{n}", BatchState.FAILED, ("token_limit_exceeded: x",))
        poll(deps)
        [chunk] = deps.store.get_chunks(job_id)
        assert chunk.not_before is not None
        waits.append(chunk.not_before - clock.now())
        clock.advance(chunk.not_before - clock.now())
        poll(deps)
    assert waits == [30, 60, 100, 100]


def test_death_after_the_reservation_the_next_submitter_takes_the_same_hold() -> None:
    """Crash gap of step 1: reserved (and leased), then died before the create."""
    deps, provider, clock = quota_deps(1000)

    def die() -> None:
        raise CrashAfterSubmit

    provider.stall_before_create = die
    with pytest.raises(CrashAfterSubmit):
        submit(deps, 3, "a")
    pool = deps.store.get_pool(POOL)
    assert list(pool.holds) == [next(iter(pool.holds))] and pool.in_use == 3 * TOKENS
    clock.advance(61)  # the dead submitter's lease runs out
    poll(deps)
    pool = deps.store.get_pool(POOL)
    assert pool.in_use == 3 * TOKENS and len(pool.holds) == 1  # the same hold, once
    assert len(provider.batches) == 1


@pytest.mark.parametrize("left", ["batch ended", "sent back for the quota"])
def test_death_before_the_release_the_sweep_frees_the_room(left: str) -> None:
    """Crash gap of the release: the chunk's batch ended (or the provider failed it for its
    quota and the chunk went back to pending), recorded; the process died before the
    release."""
    deps, provider, clock = quota_deps(3 * TOKENS)
    first = submit(deps, 3, "a")
    if left == "batch ended":
        end_batch(provider, "batch_0")
        change = Change(claims.follow_batch, provider.get_batch("batch_0"), clock.now())
    else:
        end_batch(provider, "batch_0", BatchState.FAILED, ("token_limit_exceeded: x",))
        failed = provider.get_batch("batch_0")
        change = Change(claims.requeue_failed, failed, clock.now(), clock.now() + 10_000)
    deps.store.update_chunk(first, 0, change)
    assert in_use(deps) == 3 * TOKENS  # the release never ran
    second = submit(deps, 3, "b")
    assert states(deps, second) == [ChunkState.PENDING]  # the hold is too fresh to sweep
    clock.advance(61)
    poll(deps)
    assert states(deps, second) == [ChunkState.RUNNING]
    pool = deps.store.get_pool(POOL)
    assert list(pool.holds) == [hold_key(second, 0)]


def test_a_canceled_chunk_gives_its_room_back() -> None:
    deps, _, clock = quota_deps(1000)
    job_id = submit(deps, 3, "a")
    assert in_use(deps) == 3 * TOKENS
    store = deps.store
    assert isinstance(store, MemoryJobStore)
    store.update_job(job_id, Change(claims.ask_cancel, clock.now()))
    poll(deps)  # asks the provider to cancel, follows the batch to its end
    poll(deps)
    assert in_use(deps) == 0


@pytest.mark.parametrize("died_after_leaving", [False, True])
def test_a_canceled_job_gives_its_place_in_the_queue_to_the_jobs_behind_it_at_once(
    died_after_leaving: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job waiting for room ranks first (it holds none and has waited longest); once
    it is canceled the room goes to the others now, not when its wait runs out
    (`quota_wait_seconds`, 10 minutes)."""
    deps, provider, clock = quota_deps(2 * TOKENS, max_requests=1)
    big = submit(deps, 4, "big")  # two running, two waiting
    queued = submit(deps, 2, "queued")
    poll(deps)
    assert set(deps.store.get_pool(POOL).waiters) == {big, queued}
    deps.store.update_job(queued, Change(claims.ask_cancel, clock.now()))
    if died_after_leaving:  # its place given up, then the tick died before the chunks ended
        real = cancel.settle

        def dies(*args: object, **kwargs: object) -> None:
            raise CrashAfterSubmit

        monkeypatch.setattr(cancel, "settle", dies)
        with pytest.raises(CrashAfterSubmit):
            advance.advance_job(deps, deps.store.get_job(queued), "t", clock.now() + 60)
        monkeypatch.setattr(cancel, "settle", real)
        assert states(deps, queued) == [ChunkState.PENDING, ChunkState.PENDING]
    else:
        poll(deps)  # the tick that carries the cancel out
        assert states(deps, queued) == [ChunkState.ENDED, ChunkState.ENDED]
    assert queued not in deps.store.get_pool(POOL).waiters
    provider.end()  # big's two batches end
    poll(deps)
    assert states(deps, queued) == [ChunkState.ENDED, ChunkState.ENDED]
    assert states(deps, big).count(ChunkState.PENDING) == 0  # admitted at once
    assert queued not in deps.store.get_pool(POOL).waiters and in_use(deps) == 2 * TOKENS


def test_the_api_and_the_cli_say_why_a_job_waits(capsys: pytest.CaptureFixture[str]) -> None:
    from batchline.services.api.models import JobView
    from batchline.services.api.views import job_view
    from batchline_tools.cli import _print_job

    deps, _, _ = quota_deps(2 * TOKENS, max_requests=1)
    submit(deps, 2, "a")
    second = submit(deps, 1, "b")
    poll(deps)
    job = deps.store.get_job(second)
    assert job is not None
    reason = f"queued: 16 of 16 enqueued tokens in use for {POOL}"
    assert job_view(job)["waiting"] == reason
    assert JobView.model_validate(job_view(job)).waiting == reason
    _print_job(second, job)
    out = capsys.readouterr().out
    assert f"waiting  {reason}" in out
    assert "finish   not known yet: no line answered so far" in out  # no pace to go by


def test_a_pool_too_busy_to_answer_leaves_the_chunk_pending_for_the_next_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deps, provider, _ = quota_deps(1000)
    monkeypatch.setattr(MemoryJobStore, "update_pool", _always_contended)
    job_id = submit(deps, 3, "a")
    assert states(deps, job_id) == [ChunkState.PENDING] and provider.batches == {}
    job = deps.store.get_job(job_id)
    assert (
        job is not None
        and job.waiting == f"queued: {POOL}'s pool is busy (many at once); asked again next tick"
    )
    monkeypatch.undo()
    poll(deps)
    assert states(deps, job_id) == [ChunkState.RUNNING]


def _always_contended(self: MemoryJobStore, key: str, change: object) -> None:
    from batchline.errors import Contention

    raise Contention(f"updating quota pool {key}: gave up")


def test_death_between_a_refused_create_and_its_requeue_the_next_submitter_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Crash gap of the requeue: the provider answered 429, the process died before the
    chunk went back to pending. Its lease runs out; its next submitter takes the same hold
    and creates the batch, once."""
    from batchline.services import submitting

    def die(*_: object) -> float:
        raise CrashAfterSubmit

    deps, provider, clock = quota_deps(1000)
    provider.fail_create = ProviderError("HTTP 429: queue full", retryable=True, status=429)
    monkeypatch.setattr(submitting, "backoff_until", die)
    with pytest.raises(CrashAfterSubmit):
        submit(deps, 3, "a")
    monkeypatch.undo()
    store = deps.store
    assert isinstance(store, MemoryJobStore)
    [job_id] = list(store.jobs)
    assert states(deps, job_id) == [ChunkState.SUBMITTING] and in_use(deps) == 3 * TOKENS
    clock.advance(61)
    poll(deps)
    assert states(deps, job_id) == [ChunkState.RUNNING] and len(provider.batches) == 1
    assert in_use(deps) == 3 * TOKENS and len(deps.store.get_pool(POOL).holds) == 1


def test_a_batch_adopted_after_a_crash_and_failed_for_the_quota_is_sent_again() -> None:
    deps, provider, clock = quota_deps(1000)
    provider.crash_after_submit = True  # created at the provider, never recorded
    with pytest.raises(CrashAfterSubmit):
        submit(deps, 3, "a")
    store = deps.store
    assert isinstance(store, MemoryJobStore)
    [job_id] = list(store.jobs)
    end_batch(provider, "batch_0", BatchState.FAILED, ("token_limit_exceeded: x",))
    clock.advance(61)
    poll(deps)  # the next submitter finds batch_0 by its tag: failed for the quota
    [chunk] = deps.store.get_chunks(job_id)
    assert (chunk.state, chunk.batch_id, chunk.quota_refused) == (
        ChunkState.PENDING,
        None,
        ["batch_0"],
    )
    assert in_use(deps) == 0
    clock.advance(31)
    poll(deps)
    end_batch(provider, "batch_1")
    final, lines = finish(deps, job_id)
    assert final.state is JobState.SUCCEEDED
    assert [r["status"] for r in lines] == ["succeeded"] * 3
