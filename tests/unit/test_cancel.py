"""Cancelling a job: recorded by whoever asks, carried out by poll, finished by collect."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from batchline.bootstrap import Deps
from batchline.domain.models import BatchState, ChunkState, Job, JobState
from batchline.services.cancel import JobEnded, request_cancel
from batchline.services.poll import poll
from batchline.services.submit import handle_object_finalized
from batchline_tools.memory import MemoryJobStore

from .fakes import CrashAfterSubmit, make_deps
from .test_pipeline import finish, line, upload


def submitted(deps: Deps, lines: int) -> Job:
    job = handle_object_finalized(
        deps, upload(deps, b"\n".join(line(custom_id=f"c{i}") for i in range(lines)))
    )
    assert job is not None
    return job


def only_job(deps: Deps) -> Job:
    store = deps.store
    assert isinstance(store, MemoryJobStore)
    [job] = [j for j in (store.get_job(i) for i in store.jobs) if j is not None]
    return job


def cancel(deps: Deps, job: Job) -> Job:
    asked = request_cancel(deps.store, job.job_id, deps.clock.now())
    assert asked is not None and asked.cancel_requested_at is not None
    return asked


def test_a_running_batch_is_canceled_and_the_answers_already_in_are_kept() -> None:
    deps, provider, _ = make_deps()
    job = submitted(deps, 4)
    [fake] = provider.batches.values()
    fake.finished = {"bl-1", "bl-2"}  # the provider had run two requests
    cancel(deps, job)
    final, lines = finish(deps, job.job_id)
    assert fake.batch.state is BatchState.CANCELED
    assert [r["status"] for r in lines] == ["succeeded", "succeeded", "canceled", "canceled"]
    assert lines[2]["error"]["type"] == "batch_canceled"  # type: ignore[index]
    assert final.state is JobState.CANCELED
    assert final.counts["succeeded"] == 2 and final.counts["canceled"] == 2
    summary = orjson.loads(deps.blobs.read_bytes(final.summary_uri))
    assert summary["state"] == "canceled"
    assert summary["timings"]["cancel_requested_at"] == final.cancel_requested_at


def test_chunks_never_submitted_end_canceled_without_reaching_the_provider() -> None:
    deps, provider, _ = make_deps(max_requests=2)
    deps.settings = replace(deps.settings, work_budget_seconds=0)  # submit runs out of time
    job = submitted(deps, 5)
    assert [c.state for c in deps.store.get_chunks(job.job_id)] == [ChunkState.PENDING] * 3
    deps.settings = replace(deps.settings, work_budget_seconds=60)
    cancel(deps, job)
    final, lines = finish(deps, job.job_id)
    assert provider.batches == {}
    assert {r["status"] for r in lines} == {"canceled"} and len(lines) == 5
    assert {r["error"]["type"] for r in lines} == {"job_canceled"}  # type: ignore[index]
    assert final.state is JobState.CANCELED


def test_a_crashed_submit_is_adopted_and_canceled_never_submitted_again() -> None:
    deps, provider, clock = make_deps()
    provider.crash_after_submit = True
    with pytest.raises(CrashAfterSubmit):
        submitted(deps, 3)
    job = only_job(deps)
    provider.batches["batch_0"].finished = {"bl-1"}
    cancel(deps, job)
    clock.advance(61)  # the crashed holder's lease runs out
    poll(deps)  # adopts batch_0
    final, lines = finish(deps, job.job_id)  # cancels it
    assert list(provider.batches) == ["batch_0"]
    assert provider.batches["batch_0"].batch.state is BatchState.CANCELED
    assert [r["status"] for r in lines] == ["succeeded", "canceled", "canceled"]
    assert final.state is JobState.CANCELED


def test_a_submit_that_crashed_before_the_batch_existed_is_not_retried() -> None:
    deps, provider, clock = make_deps()

    def die() -> None:
        raise CrashAfterSubmit

    provider.stall_before_create = die
    with pytest.raises(CrashAfterSubmit):
        submitted(deps, 3)
    job = only_job(deps)
    cancel(deps, job)
    clock.advance(61)
    final, lines = finish(deps, job.job_id)
    assert provider.batches == {}
    assert [r["status"] for r in lines] == ["canceled"] * 3
    assert final.state is JobState.CANCELED


def test_asking_twice_changes_nothing() -> None:
    deps, _, clock = make_deps()
    job = submitted(deps, 2)
    first = cancel(deps, job)
    clock.advance(5)
    again = request_cancel(deps.store, job.job_id, clock.now())
    assert again is not None and again.cancel_requested_at == first.cancel_requested_at


def test_an_ended_job_cannot_be_canceled_and_an_unknown_one_is_not_found() -> None:
    deps, provider, clock = make_deps()
    job = submitted(deps, 1)
    provider.end()
    finish(deps, job.job_id)
    with pytest.raises(JobEnded, match="succeeded"):
        request_cancel(deps.store, job.job_id, clock.now())
    assert request_cancel(deps.store, "job-unknown", clock.now()) is None


def test_a_cancel_that_came_too_late_to_stop_anything_leaves_the_earned_state() -> None:
    deps, provider, _ = make_deps()
    job = submitted(deps, 2)
    provider.end()  # every request ran before the cancel reached the provider
    cancel(deps, job)
    final, lines = finish(deps, job.job_id)
    assert [r["status"] for r in lines] == ["succeeded", "succeeded"]
    assert final.state is JobState.SUCCEEDED and final.cancel_requested_at is not None


def test_status_shows_a_cancel_until_the_job_ends(capsys: pytest.CaptureFixture[str]) -> None:
    from batchline_tools.cli import _print_job

    deps, provider, _ = make_deps()
    job = cancel(deps, submitted(deps, 1))
    _print_job(job.job_id, job)
    assert f"job      {job.job_id}  running (cancel requested)" in capsys.readouterr().out
    provider.end()  # every request ran before the cancel reached the provider
    final, _ = finish(deps, job.job_id)
    _print_job(final.job_id, final)
    assert "cancel requested" not in capsys.readouterr().out
