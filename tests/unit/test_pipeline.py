"""The services end to end on in-memory ports: submit → poll → collect."""

from __future__ import annotations

import gzip
from dataclasses import replace

import orjson
import pytest

from batchline.bootstrap import Deps
from batchline.domain.models import BatchState, ChunkState, Job, JobState
from batchline.services.collect import collect
from batchline.services.poll import poll
from batchline.services.submit import ObjectFinalized, handle_object_finalized
from batchline_tools.memory import MemoryBlobStore, MemoryJobStore, RecordingPublisher

from .fakes import CrashAfterSubmit, FakeProvider, make_deps

MSG = [{"role": "user", "content": "hi"}]


def line(**fields: object) -> bytes:
    return orjson.dumps({"model": "openai/gpt-4o-mini", "messages": MSG, **fields})


def upload(
    deps: Deps, data: bytes, name: str = "dir/in.jsonl", metadata: dict[str, str] | None = None
) -> ObjectFinalized:
    blobs = deps.blobs
    assert isinstance(blobs, MemoryBlobStore)
    generation = blobs.put(f"gs://in/{name}", data)
    return ObjectFinalized("in", name, generation, len(data), metadata=metadata or {})


def run_to_end(
    deps: Deps, provider: FakeProvider, event: ObjectFinalized
) -> list[dict[str, object]]:
    job = handle_object_finalized(deps, event)
    assert job is not None
    provider.end()
    return finish(deps, job.job_id)[1]


def finish(deps: Deps, job_id: str) -> tuple[Job, list[dict[str, object]]]:
    """A poll tick, then the collects it asked for; the ended job and its result lines."""
    poll(deps)
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    for message in publisher.on("batchline-collect"):
        collect(deps, message["job_id"])
    final = deps.store.get_job(job_id)
    assert final is not None and final.state.terminal, final
    lines = [orjson.loads(x) for x in deps.blobs.read_bytes(final.results_uri).splitlines()]
    return final, lines


def test_one_result_per_line_in_order_with_invalid_and_generated_ids() -> None:
    deps, provider, _ = make_deps(max_requests=3)
    data = (
        b"\n".join(
            [
                line(custom_id="a"),
                b"",
                line(),  # gets line-3
                b"not json",
                line(custom_id="line-3"),  # explicit id wins; line 3 becomes line-3-2
                line(custom_id="a"),  # duplicate
                line(custom_id="z"),
                line(custom_id="y"),
            ]
        )
        + b"\n"
    )
    results = run_to_end(deps, provider, upload(deps, data))
    assert [(r["line"], r["custom_id"], r["status"]) for r in results] == [
        (1, "a", "succeeded"),
        (3, "line-3-2", "succeeded"),
        (4, "line-4", "invalid"),
        (5, "line-3", "succeeded"),
        (6, "a", "invalid"),
        (7, "z", "succeeded"),
        (8, "y", "succeeded"),
    ]
    assert "duplicate of line 1" in results[4]["error"]["message"]
    assert len(provider.batches) == 2  # 5 valid requests, 3 per chunk
    job = next(iter(deps.store.jobs.values()))
    summary = orjson.loads(deps.blobs.read_bytes(job.summary_uri))
    assert summary["counts"] == {"invalid": 2, "succeeded": 5}
    assert summary["blank_lines"] == 1 and summary["lines"] == 7
    assert summary["state"] == job.state == JobState.PARTIAL
    assert summary["usage"] == {"input_tokens": 50, "output_tokens": 25}
    assert summary["cost"]["batch_usd"] == pytest.approx(5 * (10 * 0.075 + 5 * 0.30) / 1e6)
    events = deps.publisher.on("batchline-events")
    assert [e["job_id"] for e in events] == [job.job_id] and events[0]["state"] == "partial"


def test_duplicate_events_make_one_job_and_one_batch_per_chunk() -> None:
    deps, provider, _ = make_deps(max_requests=2)
    event = upload(deps, b"\n".join(line(custom_id=str(i)) for i in range(5)))
    for _ in range(3):
        handle_object_finalized(deps, event)
    assert len(deps.store.jobs) == 1
    assert len(provider.batches) == 3


def test_crash_after_provider_accepted_is_adopted_not_resubmitted() -> None:
    deps, provider, clock = make_deps()
    provider.crash_after_submit = True
    event = upload(deps, line(custom_id="x") + b"\n")
    with pytest.raises(CrashAfterSubmit):
        handle_object_finalized(deps, event)
    job_id = next(iter(deps.store.jobs))
    [chunk] = deps.store.get_chunks(job_id)
    assert chunk.state is ChunkState.SUBMITTING and chunk.batch_id is None
    poll(deps)  # lease still live: nobody touches the chunk
    assert len(provider.batches) == 1 and deps.store.get_chunks(job_id)[0].batch_id is None
    clock.advance(61)
    poll(deps)
    [chunk] = deps.store.get_chunks(job_id)
    assert chunk.state is ChunkState.RUNNING and chunk.batch_id == "batch_0"
    assert len(provider.batches) == 1


def test_expired_batch_keeps_finished_lines_and_expires_the_rest() -> None:
    deps, provider, _ = make_deps()
    lines = b"\n".join(line(custom_id=str(i)) for i in range(4))
    event = upload(deps, lines, metadata={"max_retries": "0"})  # (retries: test_rounds.py)
    job = handle_object_finalized(deps, event)
    assert job is not None
    provider.end(BatchState.EXPIRED, finished=3)
    poll(deps)
    collect(deps, job.job_id)
    results = [orjson.loads(x) for x in deps.blobs.read_bytes(job.results_uri).splitlines()]
    assert [r["status"] for r in results] == ["succeeded"] * 3 + ["expired"]
    assert results[3]["error"]["type"] == "batch_expired"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\n\n", "no requests"),
        (gzip.compress(b"{}")[:-6] + b"xxxxxx", "decompress"),
    ],
)
def test_unreadable_files_become_rejected_jobs_with_a_reason(data: bytes, reason: str) -> None:
    deps, provider, _ = make_deps()
    name = "f.jsonl.gz" if data.startswith(b"\x1f\x8b") else "f.jsonl"
    job = handle_object_finalized(deps, upload(deps, data, name=name))
    assert job is not None and job.state is JobState.REJECTED
    summary = orjson.loads(deps.blobs.read_bytes(job.summary_uri))
    assert reason in summary["error"] and summary["state"] == "rejected"
    assert provider.batches == {}
    assert deps.publisher.on("batchline-events")[0]["state"] == "rejected"


def test_over_size_file_is_rejected_before_reading() -> None:
    deps, _, _ = make_deps()
    event = upload(deps, line() + b"\n")
    event = ObjectFinalized(event.bucket, event.name, event.generation, size=10**12)
    job = handle_object_finalized(deps, event)
    assert job is not None and job.state is JobState.REJECTED and "limit" in (job.error or "")


def test_collect_run_twice_writes_once_and_publishes_once() -> None:
    deps, provider, _ = make_deps()
    job = handle_object_finalized(deps, upload(deps, line(custom_id="a") + b"\n"))
    assert job is not None
    provider.end()
    poll(deps)
    collect(deps, job.job_id)
    collect(deps, job.job_id)
    assert len(deps.publisher.on("batchline-events")) == 1


def test_job_default_model_from_object_metadata() -> None:
    deps, provider, _ = make_deps()
    data = orjson.dumps({"custom_id": "q", "messages": MSG}) + b"\n"
    results = run_to_end(deps, provider, upload(deps, data, metadata={"model": "openai/gpt-4.1"}))
    assert results[0]["model"] == "gpt-4.1" and results[0]["status"] == "succeeded"


def test_store_is_memory() -> None:
    deps, _, _ = make_deps()
    assert isinstance(deps.store, MemoryJobStore)


def test_a_bad_utf8_line_after_good_ones_is_only_that_line_invalid() -> None:
    deps, provider, _ = make_deps()
    data = line(custom_id="a") + b"\n" + b'{"custom_id": "b", "x": "\xff"}\n'
    results = run_to_end(deps, provider, upload(deps, data))
    assert [(r["custom_id"], r["status"]) for r in results] == [
        ("a", "succeeded"),
        ("line-2", "invalid"),
    ]
    assert "UTF-8" in results[1]["error"]["message"]


def test_submit_out_of_time_leaves_chunks_pending_for_poll() -> None:
    deps, provider, _ = make_deps(max_requests=2)
    deps.settings = replace(deps.settings, work_budget_seconds=0)
    job = handle_object_finalized(
        deps, upload(deps, b"\n".join(line(custom_id=str(i)) for i in range(5)))
    )
    assert job is not None and job.state is JobState.SUBMITTING
    assert [c.state for c in deps.store.get_chunks(job.job_id)] == [ChunkState.PENDING] * 3
    assert provider.batches == {}
    deps.settings = replace(deps.settings, work_budget_seconds=60)
    poll(deps)
    assert [c.state for c in deps.store.get_chunks(job.job_id)] == [ChunkState.RUNNING] * 3
    assert len(provider.batches) == 3
    current = deps.store.get_job(job.job_id)
    assert current is not None and current.state is JobState.RUNNING


def test_collect_in_many_small_runs_still_merges_in_order_and_first_result_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchline.domain.workfiles import runs

    monkeypatch.setattr(runs, "RUN_BYTES", 300)  # a few records per run
    deps, provider, _ = make_deps(max_requests=40)
    data = b"\n".join(line(custom_id=f"m{i}") for i in range(100))
    job = handle_object_finalized(deps, upload(deps, data))
    assert job is not None
    fake = provider.batches["batch_0"]
    fake.request_ids.append(fake.request_ids[0])  # the provider repeats a result
    provider.end()
    poll(deps)
    collect(deps, job.job_id)
    done = deps.store.get_job(job.job_id)
    assert done is not None and done.state is JobState.SUCCEEDED
    results = [orjson.loads(x) for x in deps.blobs.read_bytes(done.results_uri).splitlines()]
    assert [r["custom_id"] for r in results] == [f"m{i}" for i in range(100)]
    blobs = deps.blobs
    assert isinstance(blobs, MemoryBlobStore)
    assert sum("/run-" in uri for uri in blobs.objects) > 10


def test_retention_sets_expire_at_on_finished_jobs_and_their_chunks() -> None:
    from datetime import UTC, datetime

    deps, provider, clock = make_deps(max_requests=1)
    deps.settings = replace(deps.settings, retention_days=7)
    results = run_to_end(deps, provider, upload(deps, line(custom_id="a") + b"\n" + line() + b"\n"))
    assert len(results) == 2
    job = next(iter(deps.store.jobs.values()))
    expected = datetime.fromtimestamp(clock.now() + 7 * 86400, tz=UTC)
    assert job.expire_at == expected
    assert [c.expire_at for c in deps.store.get_chunks(job.job_id)] == [expected, expected]


def test_without_retention_records_never_expire() -> None:
    deps, provider, _ = make_deps()
    run_to_end(deps, provider, upload(deps, line(custom_id="a") + b"\n"))
    job = next(iter(deps.store.jobs.values()))
    assert job.expire_at is None
    assert all(c.expire_at is None for c in deps.store.get_chunks(job.job_id))
