"""A waiting chunk's input uploaded ahead of its quota admission (`services/upload_ahead.py`),
through the services on in-memory ports: only the batch's create runs inside the quota
hold, and the crash gaps of each new step."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from batchline.bootstrap import Deps
from batchline.domain.models import BatchState, BatchTag, Chunk, ChunkState, JobState, hold_key
from batchline.errors import ProviderError
from batchline.services import upload_ahead
from batchline.services.cancel import request_cancel
from batchline.services.poll import poll

from .fakes import CrashAfterSubmit, FakeProvider
from .test_admission import POOL, TOKENS, end_batch, quota_deps, submit
from .test_pipeline import finish


def chunks(deps: Deps, job_id: str) -> list[Chunk]:
    return deps.store.get_chunks(job_id)


def batches_of(provider: FakeProvider, job_id: str, index: int) -> list[str]:
    """The batches the provider made for the chunk (whatever became of them)."""
    tag = BatchTag(job_id, index)
    return [b for b, fake in provider.batches.items() if fake.batch.tag == tag]


def keeper(lost: bool = False) -> Any:
    return SimpleNamespace(lost=lost)


def test_waiting_chunks_are_uploaded_ahead_and_created_from_their_upload() -> None:
    deps, provider, _ = quota_deps(TOKENS, max_requests=1)  # the quota holds one chunk
    job_id = submit(deps, 3, "a")
    first, second, third = chunks(deps, job_id)
    assert [c.state for c in (first, second, third)] == [
        ChunkState.RUNNING,
        ChunkState.PENDING,
        ChunkState.PENDING,
    ]
    # Chunk 0 was admitted at once (its upload in its create); 1 and 2 went up while
    # they wait, without holding any room.
    assert provider.uploads == [BatchTag(job_id, 0), BatchTag(job_id, 1), BatchTag(job_id, 2)]
    assert (second.uploaded_input, third.uploaded_input) == ("file-1", "file-2")
    assert list(deps.store.get_pool(POOL).holds) == [hold_key(job_id, 0)]
    assert provider.created_from == {"batch_0": "file-0"}
    end_batch(provider, "batch_0")
    poll(deps)  # chunk 1 is admitted: its batch is made from its upload, no new one
    assert chunks(deps, job_id)[1].state is ChunkState.RUNNING
    assert provider.created_from["batch_1"] == "file-1"
    assert len(provider.uploads) == 3
    end_batch(provider, "batch_1")
    poll(deps)
    end_batch(provider, "batch_2")
    assert provider.created_from["batch_2"] == "file-2" and len(provider.uploads) == 3
    final, lines = finish(deps, job_id)
    assert final.state is JobState.SUCCEEDED
    assert sorted(r["custom_id"] for r in lines) == ["a-0", "a-1", "a-2"]
    assert [r["status"] for r in lines] == ["succeeded"] * 3


def test_a_job_keeps_at_most_two_chunks_uploaded_ahead_in_chunk_order() -> None:
    deps, provider, _ = quota_deps(TOKENS, max_requests=1)
    job_id = submit(deps, 6, "a")
    assert [c.uploaded_input is not None for c in chunks(deps, job_id)] == [
        False,  # running: uploaded in its create
        True,
        True,
        False,
        False,
        False,
    ]
    poll(deps)
    poll(deps)  # chunk 0 still runs: two are up already, nothing more goes up
    assert [c.index for c in chunks(deps, job_id) if c.uploaded_input] == [1, 2]
    assert len(provider.uploads) == 3
    end_batch(provider, "batch_0")
    poll(deps)  # chunk 1 goes from its upload; chunk 3 goes up in its place
    assert provider.created_from["batch_1"] == "file-1"
    assert [c.index for c in chunks(deps, job_id) if c.uploaded_input] == [1, 2, 3]
    assert len(provider.uploads) == 4


def test_no_upload_ahead_past_the_deadline_once_the_lease_is_lost_or_for_a_full_pool() -> None:
    deps, provider, clock = quota_deps(TOKENS, max_requests=1)
    job_id = submit(deps, 1, "a")  # its chunk runs, and holds the whole quota
    provider.crash_after_upload = True  # an upload now would fail the test
    waiting = [replace(chunks(deps, job_id)[0], state=ChunkState.PENDING, index=1)]
    waits = {POOL: "queued"}
    assert upload_ahead.upload_waiting(deps, waiting, waits, clock.now(), keeper()) == 0
    assert upload_ahead.upload_waiting(deps, waiting, waits, clock.now() + 60, keeper(True)) == 0
    assert upload_ahead.upload_waiting(deps, waiting, {}, clock.now() + 60, keeper()) == 0
    assert len(provider.uploads) == 1  # job a's create only


def test_a_failed_upload_ahead_stops_uploading_and_leaves_the_chunks_as_they_were(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deps, provider, clock = quota_deps(TOKENS, max_requests=1)
    job_id = submit(deps, 1, "a")
    calls: list[BatchTag] = []

    def refuse(payload: Any, tag: BatchTag) -> str:
        calls.append(tag)
        raise ProviderError("OpenAI uploading the input: HTTP 500", retryable=True, status=500)

    monkeypatch.setattr(provider, "upload_input", refuse)
    base = chunks(deps, job_id)[0]
    waiting = [replace(base, state=ChunkState.PENDING, index=i) for i in (1, 2)]
    done = upload_ahead.upload_waiting(deps, waiting, {POOL: "queued"}, clock.now() + 60, keeper())
    assert done == 0 and calls == [BatchTag(job_id, 1)]  # the second is not tried


def test_a_provider_without_uploads_uploads_nothing_ahead() -> None:
    deps, provider, _ = quota_deps(TOKENS, max_requests=1)
    provider.takes_uploads = False  # requests inline (Anthropic), or read from GCS (Vertex)
    job_id = submit(deps, 3, "a")
    assert [c.uploaded_input for c in chunks(deps, job_id)] == [None, None, None]
    assert provider.uploads == [] and provider.created_from == {"batch_0": None}


def waiting_behind(deps: Deps, provider: FakeProvider) -> None:
    """Job `a` takes the whole quota (its one batch is batch_0): a job submitted next
    is told to wait, and the next upload is its upload ahead."""
    job_id = submit(deps, 1, "a")
    assert provider.uploads == [BatchTag(job_id, 0)]


def job_b(deps: Deps) -> str:
    [job] = [j for j in deps.store.active_jobs() if j.source.name == "b.jsonl"]
    return job.job_id


def test_death_after_the_upload_before_it_is_noted_uploads_again() -> None:
    """Crash gap (a): the file went up, the chunk never named it: an orphan (it expires
    at the provider), and the next advance uploads again; one batch, from one file."""
    deps, provider, clock = quota_deps(TOKENS, max_requests=1)
    waiting_behind(deps, provider)
    provider.crash_after_upload = True
    with pytest.raises(CrashAfterSubmit):
        submit(deps, 1, "b")
    b = job_b(deps)
    [chunk] = chunks(deps, b)
    assert chunk.state is ChunkState.PENDING and chunk.uploaded_input is None
    assert "file-1" in provider.files  # the orphan
    clock.advance(61)  # the dead advance's job lease runs out
    poll(deps)
    [chunk] = chunks(deps, b)
    assert chunk.uploaded_input == "file-2"
    end_batch(provider, "batch_0")
    poll(deps)
    [batch_id] = batches_of(provider, b, 0)
    assert provider.created_from[batch_id] == "file-2"
    assert len(provider.uploads) == 3  # a's, the orphan, the one noted
    provider.end()
    final, lines = finish(deps, b)
    assert final.state is JobState.SUCCEEDED and [r["status"] for r in lines] == ["succeeded"]


def test_death_after_the_upload_is_noted_creates_from_it_without_a_second_upload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Crash gap (b): noted, then died (job lease held, its wait not noted)."""
    deps, provider, clock = quota_deps(TOKENS, max_requests=1)
    waiting_behind(deps, provider)
    real_note = upload_ahead._note

    def note_then_die(*args: Any) -> None:
        real_note(*args)
        raise CrashAfterSubmit

    monkeypatch.setattr(upload_ahead, "_note", note_then_die)
    with pytest.raises(CrashAfterSubmit):
        submit(deps, 1, "b")
    monkeypatch.setattr(upload_ahead, "_note", real_note)
    b = job_b(deps)
    [chunk] = chunks(deps, b)
    assert chunk.uploaded_input == "file-1"
    clock.advance(61)
    end_batch(provider, "batch_0")
    poll(deps)
    [batch_id] = batches_of(provider, b, 0)
    assert provider.created_from[batch_id] == "file-1"
    assert len(provider.uploads) == 2  # a's (in its create) and b's ahead: no second one


def test_two_invocations_upload_the_same_chunk_the_loser_discards_its_file() -> None:
    """Crash gap (c), a race: while one invocation uploads, another uploads and notes
    first; the first one's note is refused and its file deleted."""
    deps, provider, clock = quota_deps(TOKENS, max_requests=1)
    waiting_behind(deps, provider)
    job_ids: list[str] = []

    def other_invocation() -> None:
        job_ids.append(job_b(deps))
        waiting = chunks(deps, job_ids[0])
        done = upload_ahead.upload_waiting(
            deps, waiting, {POOL: "queued"}, clock.now() + 60, keeper()
        )
        assert done == 1

    provider.stall_after_upload = other_invocation
    submit(deps, 1, "b")
    [chunk] = chunks(deps, job_ids[0])
    assert chunk.uploaded_input == "file-2"  # the other invocation's, noted first
    assert provider.discarded == ["file-1"] and "file-1" not in provider.files
    end_batch(provider, "batch_0")
    poll(deps)
    [batch_id] = batches_of(provider, job_ids[0], 0)
    assert provider.created_from[batch_id] == "file-2" and len(provider.uploads) == 3


def test_an_upload_gone_at_create_is_uploaded_afresh_and_the_batch_made_once() -> None:
    """Crash gap (d): the provider no longer has the file (expired, deleted)."""
    deps, provider, _ = quota_deps(TOKENS, max_requests=1)
    job_id = submit(deps, 2, "a")
    assert chunks(deps, job_id)[1].uploaded_input == "file-1"
    del provider.files["file-1"]
    end_batch(provider, "batch_0")
    poll(deps)
    [batch_id] = batches_of(provider, job_id, 1)
    assert provider.created_from[batch_id] == "file-2"
    assert provider.uploads == [BatchTag(job_id, 0), BatchTag(job_id, 1), BatchTag(job_id, 1)]


def test_a_chunk_sent_back_by_the_quota_keeps_its_upload() -> None:
    deps, provider, clock = quota_deps(TOKENS, max_requests=1)
    job_id = submit(deps, 2, "a")
    end_batch(provider, "batch_0")
    poll(deps)
    assert provider.created_from["batch_1"] == "file-1"
    end_batch(provider, "batch_1", BatchState.FAILED, ("token_limit_exceeded: x",))
    poll(deps)  # sent back to pending, its file kept
    assert chunks(deps, job_id)[1].uploaded_input == "file-1"
    clock.advance(31)
    poll(deps)
    [_, again] = batches_of(provider, job_id, 1)
    assert provider.created_from[again] == "file-1" and len(provider.uploads) == 2


def test_death_after_a_create_from_the_upload_the_batch_is_adopted_not_made_again() -> None:
    """Reconcile is unchanged: a chunk created from its upload, whose submitter died
    before recording the batch, has that batch adopted by its tag; nothing is uploaded
    or created again."""
    deps, provider, clock = quota_deps(TOKENS, max_requests=1)
    job_id = submit(deps, 2, "a")
    end_batch(provider, "batch_0")
    provider.crash_after_submit = True
    with pytest.raises(CrashAfterSubmit):
        poll(deps)
    assert provider.created_from["batch_1"] == "file-1"
    assert chunks(deps, job_id)[1].state is ChunkState.SUBMITTING
    clock.advance(61)  # the dead submitter's lease runs out
    poll(deps)
    second = chunks(deps, job_id)[1]
    assert (second.state, second.batch_id) == (ChunkState.RUNNING, "batch_1")
    assert batches_of(provider, job_id, 1) == ["batch_1"] and len(provider.uploads) == 2


def test_a_canceled_job_s_uploads_ahead_are_deleted() -> None:
    deps, provider, clock = quota_deps(TOKENS, max_requests=1)
    job_id = submit(deps, 3, "a")
    assert [c.uploaded_input for c in chunks(deps, job_id)] == [None, "file-1", "file-2"]
    provider.fail_discard = ProviderError("HTTP 500: try later", retryable=True, status=500)
    assert request_cancel(deps.store, job_id, clock.now()) is not None
    poll(deps)  # the pending chunks end canceled; their uploads are deleted (one fails)
    assert [c.state for c in chunks(deps, job_id)][1:] == [ChunkState.ENDED] * 2
    assert provider.discarded == ["file-2"]  # file-1's delete failed: it expires
    assert set(provider.files) == {"file-0", "file-1"}
