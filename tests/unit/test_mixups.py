"""Putting right chunks whose recorded batch holds another chunk's requests."""

from __future__ import annotations

from dataclasses import replace

from batchline.domain.models import (
    BatchState,
    Chunk,
    ChunkState,
    Job,
    JobOptions,
    JobState,
    Source,
)
from batchline.services.collect import collect
from batchline.services.mixups import MixUp, put_right
from batchline.services.poll import poll
from batchline.services.submit import handle_object_finalized

from .fakes import make_deps
from .test_pipeline import finish, line, upload

NOW = 1_800_000_000.0
LINES = {0: [1, 2, 3], 1: [4, 5, 6], 2: [7, 8, 9]}


def ended(index: int, batch_id: str | None) -> Chunk:
    return Chunk(
        job_id="j",
        index=index,
        provider="anthropic",
        model="claude-haiku-4-5",
        request_count=3,
        payload_bytes=300,
        payload_uri=f"gs://work/jobs/j/chunks/{index}/input.jsonl",
        manifest_uri=f"gs://work/jobs/j/chunks/{index}/manifest.jsonl",
        state=ChunkState.ENDED,
        attempts=1,
        submit_started_at=NOW - 100,
        batch_id=batch_id,
        batch_state=BatchState.COMPLETED,
        batch_counts={"total": 3, "completed": 3, "failed": 0},
    )


def run(records: dict[int, str | None], mixed: dict[int, str]) -> dict[int, Chunk]:
    """Chunks recording `records` (index -> batch id); `mixed` (index -> a request id its
    batch answers that is not its own) put right; the chunks afterwards."""
    deps, _, _ = make_deps()
    job = Job(
        "j",
        Source("in", "x.jsonl", "1", 10),
        JobOptions(),
        "gs://out/x/j/",
        state=JobState.COLLECTING,
        chunk_count=len(records),
    )
    chunks = [ended(i, b) for i, b in records.items()]
    assert deps.store.create_job(replace(job, state=JobState.ACCEPTED))
    assert deps.store.update_job("j", lambda j: job, new_chunks=chunks)
    found = [MixUp(chunks[i], request_id) for i, request_id in mixed.items()]
    reopened = put_right(deps, job, chunks, found, lambda c: LINES[c.index])
    assert reopened is not None and reopened.state is JobState.RUNNING
    assert reopened.collect_requested_at is None
    return {c.index: c for c in deps.store.get_chunks("j")}


def test_a_chunk_that_adopted_a_batch_whose_owner_sent_its_own_is_sent_again() -> None:
    """The issue's case: chunk 0 adopted chunk 1's batch, chunk 1 then sent its own."""
    after = run({0: "b1", 1: "b1-again"}, {0: "bl-5"})
    assert (after[0].state, after[0].batch_id, after[0].orphans) == (ChunkState.PENDING, None, [])
    assert after[0].attempts == 1 and after[0].submit_started_at is None
    assert (after[1].state, after[1].batch_id) == (ChunkState.ENDED, "b1-again")
    assert after[1].orphans == ["b1"]  # it ran, unread: reported


def test_a_chunk_recording_its_owner_s_own_batch_forgets_it_and_is_sent_again() -> None:
    after = run({0: "b1", 1: "b1"}, {0: "bl-4"})
    assert (after[0].state, after[0].batch_id) == (ChunkState.PENDING, None)
    assert (after[1].batch_id, after[1].orphans) == ("b1", [])


def test_swapped_batches_go_back_to_their_owners_and_nothing_is_sent_again() -> None:
    after = run({0: "b1", 1: "b0", 2: "b2"}, {0: "bl-4", 1: "bl-2"})
    assert [(c.state, c.batch_id, c.orphans) for c in after.values()] == [
        (ChunkState.ENDED, "b0", []),
        (ChunkState.ENDED, "b1", []),
        (ChunkState.ENDED, "b2", []),
    ]


def test_a_batch_of_no_chunk_of_the_job_is_an_orphan_of_the_chunk_that_held_it() -> None:
    after = run({0: "foreign", 1: "b1"}, {0: "bl-77"})
    assert (after[0].state, after[0].batch_id, after[0].orphans) == (
        ChunkState.PENDING,
        None,
        ["foreign"],
    )
    assert after[1].orphans == []


def test_collect_puts_swapped_batches_back_and_answers_every_line_from_its_own_batch() -> None:
    deps, provider, _ = make_deps(max_requests=2)
    event = upload(deps, b"\n".join(line(custom_id=f"c{i}") for i in range(4)))
    job = handle_object_finalized(deps, event)
    assert job is not None
    for index, batch_id in ((0, "batch_1"), (1, "batch_0")):  # the records swapped
        deps.store.update_chunk(
            job.job_id,
            index,
            lambda c, b=batch_id: replace(c, batch_id=b),  # type: ignore[misc]
        )
    provider.end()
    poll(deps)
    reopened = collect(deps, job.job_id)  # finds the swap: puts the records right
    assert reopened is not None and reopened.state is JobState.RUNNING
    final, lines = finish(deps, job.job_id)
    assert final.state is JobState.SUCCEEDED
    assert [(r["custom_id"], r["status"]) for r in lines] == [
        (f"c{i}", "succeeded") for i in range(4)
    ]
    assert [c.batch_id for c in deps.store.get_chunks(job.job_id)] == ["batch_0", "batch_1"]
    assert len(provider.batches) == 2  # nothing was sent again
