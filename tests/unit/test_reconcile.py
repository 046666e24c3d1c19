"""Finding the batch a crashed submit created, for providers with and without batch tags."""

from __future__ import annotations

import pytest

from batchline.bootstrap import Deps
from batchline.domain.models import BatchState, ChunkState, ProviderBatch
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


def test_two_unclaimed_candidates_mean_submitting_again() -> None:
    deps, provider, clock = make_deps(tags=False)
    job_id = crashed_job(deps, provider)
    foreign = other_batch(provider, 3, clock.now())
    clock.advance(61)
    poll(deps)
    [chunk] = deps.store.get_chunks(job_id)
    assert chunk.batch_id not in ("batch_0", foreign, None)
    assert len(provider.batches) == 3


def test_batches_outside_the_submit_window_are_not_candidates() -> None:
    deps, provider, clock = make_deps(tags=False)
    job_id = crashed_job(deps, provider)
    # Created long after the crashed holder's lease ended: no attempt of ours made it.
    other_batch(provider, 3, clock.now() + 60 + 3600)
    clock.advance(61)
    poll(deps)
    [chunk] = deps.store.get_chunks(job_id)
    assert chunk.batch_id == "batch_0"


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
