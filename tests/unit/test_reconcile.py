"""Finding the batch a crashed submit created, for providers with batch tags (found by
tag) and without (Anthropic: one create at a time under the create lock, found after the
mark its intent recorded)."""

from __future__ import annotations

import pytest

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change, LeaseTerms
from batchline.domain.models import BatchState, ChunkState, ProviderBatch
from batchline.errors import ProviderError
from batchline.services.poll import poll
from batchline.services.submit import handle_object_finalized
from batchline_tools.memory import MemoryJobStore

from .fakes import CrashAfterSubmit, FakeBatch, FakeProvider, make_deps
from .test_pipeline import line, upload


def crashed_job(deps: Deps, provider: FakeProvider, lines: int = 3) -> str:
    """A job whose only chunk's batch was created, but never recorded."""
    provider.crash_after_submit = True
    with pytest.raises(CrashAfterSubmit):
        handle_object_finalized(
            deps, upload(deps, b"\n".join(line(custom_id=f"c{i}") for i in range(lines)))
        )
    store = deps.store
    assert isinstance(store, MemoryJobStore)
    [job_id] = [j for j in store.jobs if store.get_chunks(j)[0].batch_id is None]
    return job_id


def other_batch(provider: FakeProvider, requests: int, created_at: float) -> str:
    batch_id = f"batch_other_{len(provider.batches)}"
    ids = [f"bl-{n}" for n in range(requests)]
    provider.batches[batch_id] = FakeBatch(
        ProviderBatch(batch_id, BatchState.RUNNING, {"total": requests}, None, created_at), ids
    )
    return batch_id


@pytest.mark.parametrize("tags", [True, False], ids=["tagged", "untagged"])
def test_the_lone_candidate_is_adopted(tags: bool) -> None:
    deps, provider, clock = make_deps(tags=tags)
    job_id = crashed_job(deps, provider)
    other_batch(provider, 2, clock.now())  # another size: not a candidate
    clock.advance(61)
    poll(deps)
    [chunk] = deps.store.get_chunks(job_id)
    assert (chunk.state, chunk.batch_id, chunk.attempts) == (ChunkState.RUNNING, "batch_0", 2)
    assert len(provider.batches) == 2


def test_a_candidate_another_chunk_recorded_is_not_ours() -> None:
    deps, provider, clock = make_deps(tags=False)
    recorded = handle_object_finalized(deps, upload(deps, line() + b"\n" + line(), name="a.jsonl"))
    assert recorded is not None
    [theirs] = deps.store.get_chunks(recorded.job_id)
    assert theirs.batch_id == "batch_0"
    job_id = crashed_job(deps, provider, lines=2)  # same size, same window: batch_1
    clock.advance(61)
    poll(deps)
    [chunk] = deps.store.get_chunks(job_id)
    assert chunk.batch_id == "batch_1" and len(provider.batches) == 2


def test_two_unrecorded_batches_after_the_mark_are_cancelled_and_the_chunk_sent_again() -> None:
    deps, provider, clock = make_deps(tags=False)
    job_id = crashed_job(deps, provider)
    foreign = other_batch(provider, 3, clock.now())  # which one was ours cannot be told
    clock.advance(61)
    poll(deps)
    [chunk] = deps.store.get_chunks(job_id)
    assert chunk.batch_id not in ("batch_0", foreign, None)
    assert sorted(chunk.orphans) == sorted(["batch_0", foreign])
    states = {batch_id: fake.batch.state for batch_id, fake in provider.batches.items()}
    assert states == {
        "batch_0": BatchState.CANCELED,
        foreign: BatchState.CANCELED,
        chunk.batch_id: BatchState.RUNNING,
    }


def test_batches_listed_before_the_mark_are_not_candidates() -> None:
    deps, provider, clock = make_deps(tags=False)
    # Same size, same minute, unrecorded, but listed before the crashed create's mark.
    before = other_batch(provider, 3, clock.now())
    job_id = crashed_job(deps, provider)
    clock.advance(61)
    poll(deps)
    [chunk] = deps.store.get_chunks(job_id)
    assert (chunk.state, chunk.batch_id, chunk.orphans) == (ChunkState.RUNNING, "batch_1", [])
    assert provider.batches[before].batch.state is BatchState.RUNNING


def test_equal_chunks_crashing_one_after_another_each_get_their_own_batch() -> None:
    """Three equal chunks; every create dies before its record. Each tick's holder of the
    lock adopts the dead one's batch for the chunk its intent names, then creates its own
    (and dies): no chunk ever takes another's batch, and nothing is created twice."""
    deps, provider, clock = make_deps(max_requests=2, tags=False)
    data = b"\n".join(line(custom_id=f"c{i}") for i in range(6))
    provider.crash_after_submit = True
    with pytest.raises(CrashAfterSubmit):
        handle_object_finalized(deps, upload(deps, data))
    store = deps.store
    assert isinstance(store, MemoryJobStore)
    [job_id] = store.jobs
    for _ in range(2):  # chunks 1 and 2
        clock.advance(61)
        provider.crash_after_submit = True
        with pytest.raises(CrashAfterSubmit):
            poll(deps)
    clock.advance(61)
    poll(deps)  # adopts the last one, creates nothing
    chunks = deps.store.get_chunks(job_id)
    assert [c.state for c in chunks] == [ChunkState.RUNNING] * 3
    assert len(provider.batches) == 3
    for chunk in chunks:
        assert chunk.batch_id is not None
        ids = provider.batches[chunk.batch_id].request_ids
        assert ids == [f"bl-{2 * chunk.index + n + 1}" for n in range(2)], chunk
    assert deps.store.get_lock(provider.name).lease is None  # given back


def test_a_chunk_waits_while_another_create_holds_the_lock() -> None:
    deps, provider, clock = make_deps(tags=False)
    held = Change(claims.take_lock, "another-invocation", clock.now(), LeaseTerms(60))
    assert deps.store.update_lock(provider.name, held) is not None
    job = handle_object_finalized(deps, upload(deps, line() + b"\n" + line()))
    assert job is not None
    [chunk] = deps.store.get_chunks(job.job_id)
    assert (chunk.state, chunk.attempts) == (ChunkState.PENDING, 0)  # not even leased
    assert provider.batches == {}
    clock.advance(61)  # the other holder is taken for dead
    poll(deps)
    [chunk] = deps.store.get_chunks(job.job_id)
    assert (chunk.state, chunk.batch_id) == (ChunkState.RUNNING, "batch_0")


@pytest.mark.parametrize(
    ("status", "left_open"), [(500, True), (None, True), (429, False), (400, False)]
)
def test_a_create_that_may_have_made_a_batch_leaves_its_intent_for_the_next_holder(
    status: int | None, left_open: bool
) -> None:
    deps, provider, _ = make_deps(tags=False)
    provider.fail_create = ProviderError("boom", retryable=status != 400, status=status)
    event = upload(deps, line() + b"\n" + line())
    if status in (400, 429):  # refused for good, or for the quota (sent again later)
        handle_object_finalized(deps, event)
    else:
        with pytest.raises(ProviderError):
            handle_object_finalized(deps, event)
    lock = deps.store.get_lock(provider.name)
    assert (lock.intent is not None) == left_open
    assert (lock.lease is not None) == left_open  # left to expire, or given back at once


def stalled_submit(deps: Deps, provider: FakeProvider) -> str:
    """Submit a job whose first submit call stalls past its lease (at the point the test
    set on `provider`); returns the job id."""
    job = handle_object_finalized(
        deps, upload(deps, b"\n".join(line(custom_id=f"c{i}") for i in range(3)))
    )
    assert job is not None
    return job.job_id


@pytest.mark.parametrize("tags", [True, False], ids=["tagged", "untagged"])
def test_a_submit_that_outlives_its_lease_cancels_its_duplicate(tags: bool) -> None:
    deps, provider, clock = make_deps(tags=tags)

    def second_submitter() -> None:
        clock.advance(61)  # the stalled holder's lease has run out
        poll(deps)  # takes the chunk over, finds no batch yet, submits its own: batch_0

    provider.stall_before_create = second_submitter
    job_id = stalled_submit(deps, provider)  # then the stalled call creates batch_1
    [chunk] = deps.store.get_chunks(job_id)
    assert (chunk.state, chunk.batch_id, chunk.attempts) == (ChunkState.RUNNING, "batch_0", 2)
    states = {batch_id: fake.batch.state for batch_id, fake in provider.batches.items()}
    assert states == {"batch_0": BatchState.RUNNING, "batch_1": BatchState.CANCELED}


@pytest.mark.parametrize("tags", [True, False], ids=["tagged", "untagged"])
def test_a_stalled_submit_whose_batch_was_adopted_keeps_it(tags: bool) -> None:
    deps, provider, clock = make_deps(tags=tags)

    def second_submitter() -> None:
        clock.advance(61)
        poll(deps)  # finds the stalled call's batch_0 and adopts it

    provider.stall_after_create = second_submitter
    job_id = stalled_submit(deps, provider)
    [chunk] = deps.store.get_chunks(job_id)
    assert (chunk.state, chunk.batch_id) == (ChunkState.RUNNING, "batch_0")
    assert [fake.batch.state for fake in provider.batches.values()] == [BatchState.RUNNING]
