"""The Vertex AI emulator through `google-cloud-aiplatform`'s own JobServiceClient (REST
transport), and every object it serves checked strictly against the SDK's protos."""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from google.api_core import exceptions
from google.cloud.aiplatform_v1.types import (
    BatchPredictionJob,
    JobState,
    ListBatchPredictionJobsResponse,
)
from google.longrunning import operations_pb2
from google.protobuf import json_format

from batchline_emulators._wsgi import start_in_thread
from batchline_emulators.vertex import EmulatorConfig, make_app

from .conftest import FAST_VERTEX_CONFIG, WAIT_SECONDS, ManualClock, VertexEmulatorHandle
from .emulator_answers import RECIPE_SCHEMA, Recipe, answer_kind, assert_kinds
from .vertex_types import message_problems, request_line_problems, row_problems

pytestmark = pytest.mark.integration

MODEL = "publishers/google/models/gemini-2.5-flash"
ENDED = {
    JobState.JOB_STATE_SUCCEEDED,
    JobState.JOB_STATE_FAILED,
    JobState.JOB_STATE_CANCELLED,
    JobState.JOB_STATE_EXPIRED,
    JobState.JOB_STATE_PARTIALLY_SUCCEEDED,
}


def line(text: str, n: int, **request: Any) -> dict[str, Any]:
    body = {
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "labels": {"batchline_request_id": f"bl-{n}"},
        **request,
    }
    return {"request": body}


def payload(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(x) + b"\n" for x in lines)


def job_body(uri: str, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {
        "display_name": "batchline-test",
        "model": model,
        "input_config": {"instances_format": "jsonl", "gcs_source": {"uris": [uri]}},
        "output_config": {
            "predictions_format": "jsonl",
            "gcs_destination": {"output_uri_prefix": uri.rsplit("/", 1)[0] + "/"},
        },
        "labels": {"batchline_job": "job-t", "batchline_chunk": "0"},
        **extra,
    }


@pytest.fixture(autouse=True)
def _clean(vertex_emulator: VertexEmulatorHandle) -> Iterator[None]:
    vertex_emulator.reset()
    yield
    vertex_emulator.reset()


@pytest.fixture
def manual(
    vertex_emulator: VertexEmulatorHandle,
) -> Iterator[Callable[..., tuple[VertexEmulatorHandle, ManualClock]]]:
    """Start an emulator (over the session's GCS) whose clock only moves when the test
    moves it: a test steps it through each state instead of polling a running clock."""
    stops = []

    def start(**config: Any) -> tuple[VertexEmulatorHandle, ManualClock]:
        clock = ManualClock()
        app = make_app(
            EmulatorConfig().merged({**FAST_VERTEX_CONFIG, **config}),
            storage_url=vertex_emulator.gcs_url,
            clock=clock,
        )
        root, stop = start_in_thread(app)
        stops.append(stop)
        handle = VertexEmulatorHandle(app, root, vertex_emulator.gcs_url, vertex_emulator.blobs)
        return handle, clock

    yield start
    for stop in stops:
        stop()


def create(emulator: VertexEmulatorHandle, lines: list[dict[str, Any]], **extra: Any) -> Any:
    staged = emulator.stage(payload(lines))
    return emulator.client().create_batch_prediction_job(
        parent=emulator.parent, batch_prediction_job=job_body(staged.uri, **extra)
    )


def wait_ended(
    emulator: VertexEmulatorHandle, name: str, timeout: float = WAIT_SECONDS
) -> list[Any]:
    client = emulator.client()
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        job = client.get_batch_prediction_job(name=name)
        seen.append(job)
        if job.state in ENDED:
            return seen
        assert time.monotonic() < deadline, job.state
        time.sleep(0.01)


def rows_of(emulator: VertexEmulatorHandle, job: Any) -> tuple[list[str], list[dict[str, Any]]]:
    directory = job.output_info.gcs_output_directory
    files = list(emulator.blobs.list_prefix(directory + "/"))
    rows = [orjson.loads(x) for uri in files for x in emulator.blobs.read_bytes(uri).splitlines()]
    return files, rows


# --------------------------------------------------------------------------- lifecycle


def test_a_job_goes_queued_pending_running_succeeded(
    manual: Callable[..., tuple[VertexEmulatorHandle, ManualClock]],
) -> None:
    emulator, clock = manual(queued_seconds=0.2, pending_seconds=0.2, lines_per_second=50)
    t0 = clock.now
    created = create(emulator, [line(f"q {i}", i) for i in range(1, 21)])
    assert isinstance(created, BatchPredictionJob)
    assert created.state == JobState.JOB_STATE_QUEUED
    assert created.name.startswith(f"{emulator.parent}/batchPredictionJobs/")
    assert created.labels == {"batchline_job": "job-t", "batchline_chunk": "0"}
    assert created.create_time is not None and not created.output_info.gcs_output_directory
    client = emulator.client()
    seen = []
    for at in (0.1, 0.3, 0.5, 0.75, 1.0):  # queued, pending, running (twice), ended
        clock.now = t0 + at
        seen.append(client.get_batch_prediction_job(name=created.name))
    assert [s.state for s in seen] == [
        JobState.JOB_STATE_QUEUED,
        JobState.JOB_STATE_PENDING,
        JobState.JOB_STATE_RUNNING,
        JobState.JOB_STATE_RUNNING,
        JobState.JOB_STATE_SUCCEEDED,
    ]
    assert not seen[1].output_info.gcs_output_directory and seen[2].output_info
    done = seen[-1]
    assert done.completion_stats.successful_count == 20
    assert done.completion_stats.failed_count == 0
    assert done.completion_stats.incomplete_count == 0
    assert done.start_time and done.end_time and done.end_time >= done.start_time
    assert done.output_info.gcs_output_directory.startswith(
        done.output_config.gcs_destination.output_uri_prefix + "prediction-model-"
    )
    files, rows = rows_of(emulator, done)
    assert [f.rsplit("/", 1)[-1] for f in files] == ["predictions.jsonl"]
    assert len(rows) == 20 and all(row_problems(r) == [] for r in rows)
    ids = [r["request"]["labels"]["batchline_request_id"] for r in rows]
    assert sorted(ids) == sorted(f"bl-{i}" for i in range(1, 21)) and ids != sorted(ids)
    text = rows[0]["response"]["candidates"][0]["content"]["parts"][0]["text"]
    assert text.startswith("[batchline vertex emulator]")


def test_failed_rows_and_split_output(vertex_emulator: VertexEmulatorHandle) -> None:
    vertex_emulator.admin({"rows_per_file": 4})
    lines = [line(f"q {i}", i) for i in range(1, 11)]
    lines[2] = line("boom [emulator:fail=500]", 3)
    lines[5] = line("refused [emulator:fail=400]", 6)
    lines[7] = line("odd", 8, temprature=1)  # a typo Gemini refuses
    created = create(vertex_emulator, lines)
    done = wait_ended(vertex_emulator, created.name)[-1]
    assert done.state == JobState.JOB_STATE_PARTIALLY_SUCCEEDED
    assert (done.completion_stats.successful_count, done.completion_stats.failed_count) == (7, 3)
    files, rows = rows_of(vertex_emulator, done)
    assert [f.rsplit("/", 1)[-1] for f in files] == [
        "predictions_00001.jsonl",
        "predictions_00002.jsonl",
        "predictions_00003.jsonl",
    ]
    assert len(rows) == 10
    failed = {r["request"]["labels"]["batchline_request_id"]: r for r in rows if r["status"]}
    assert set(failed) == {"bl-3", "bl-6", "bl-8"}
    assert '"code":500' in failed["bl-3"]["status"] and "INTERNAL" in failed["bl-3"]["status"]
    assert "INVALID_ARGUMENT" in failed["bl-6"]["status"]
    assert "Unknown name" in failed["bl-8"]["status"] and "temprature" in failed["bl-8"]["status"]
    # Each row as Vertex writes it; the refused request is echoed as it was sent.
    assert all(row_problems(r) == [] for r in rows if r is not failed["bl-8"])
    assert any("temprature" in p for p in row_problems(failed["bl-8"]))


def test_generation_config_is_honoured(vertex_emulator: VertexEmulatorHandle) -> None:
    lines = [
        line("long answer please", 1, generationConfig={"maxOutputTokens": 3}),
        line("stop early", 2, generationConfig={"stopSequences": ["answer"]}),
    ]
    done = wait_ended(vertex_emulator, create(vertex_emulator, lines).name)[-1]
    _, rows = rows_of(vertex_emulator, done)
    by_id = {r["request"]["labels"]["batchline_request_id"]: r["response"] for r in rows}
    assert by_id["bl-1"]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert by_id["bl-1"]["usageMetadata"]["candidatesTokenCount"] == 3
    assert by_id["bl-2"]["candidates"][0]["content"]["parts"][0]["text"].endswith("emulator] ")


@pytest.mark.parametrize(
    ("lines", "model", "code", "message"),
    [
        ([{"request": {"labels": {}}}], MODEL, 3, "request.contents is required"),
        ([{"not_request": 1}], MODEL, 3, "expected"),
        ([line("x", 1)], "publishers/google/models/gemini-0-nope", 5, "was not found"),
    ],
)
def test_bad_input_fails_the_job_with_an_error(
    vertex_emulator: VertexEmulatorHandle,
    lines: list[dict[str, Any]],
    model: str,
    code: int,
    message: str,
) -> None:
    created = create(vertex_emulator, lines, model=model)
    assert created.state == JobState.JOB_STATE_QUEUED  # accepted, checked when it starts
    done = wait_ended(vertex_emulator, created.name)[-1]
    assert done.state == JobState.JOB_STATE_FAILED
    assert done.error.code == code and message in done.error.message
    assert not done.output_info.gcs_output_directory


def test_a_missing_input_fails_the_job(vertex_emulator: VertexEmulatorHandle) -> None:
    uri = f"gs://{vertex_emulator.work_bucket}/nowhere/input.jsonl"
    created = vertex_emulator.client().create_batch_prediction_job(
        parent=vertex_emulator.parent, batch_prediction_job=job_body(uri)
    )
    done = wait_ended(vertex_emulator, created.name)[-1]
    assert done.state == JobState.JOB_STATE_FAILED and "does not exist" in done.error.message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"display_name": ""}, "displayName is required"),
        ({"model": "gemini-2.5-flash"}, "publishers/google/models/MODEL"),
        ({"labels": {"Batchline": "x"}}, "invalid label key"),
        ({"labels": {"batchline_job": "Job/1"}}, "invalid value"),
        ({"output_config": {"predictions_format": "bigquery"}}, "only jsonl"),
    ],
)
def test_create_checks_the_job(
    vertex_emulator: VertexEmulatorHandle, change: dict[str, Any], message: str
) -> None:
    staged = vertex_emulator.stage(payload([line("x", 1)]))
    with pytest.raises(exceptions.BadRequest, match=message):
        vertex_emulator.client().create_batch_prediction_job(
            parent=vertex_emulator.parent, batch_prediction_job={**job_body(staged.uri), **change}
        )
    assert vertex_emulator.stats()["creates"] == 0


# --------------------------------------------------------------------------- cancel, expire


def test_cancel_keeps_the_rows_that_ran(
    manual: Callable[..., tuple[VertexEmulatorHandle, ManualClock]],
) -> None:
    emulator, clock = manual(lines_per_second=40, cancel_seconds=0.2)
    t0 = clock.now
    created = create(emulator, [line(f"q {i}", i) for i in range(1, 81)])
    client = emulator.client()
    clock.now = t0 + 0.05 + 0.61  # queued and pending (0.05 s), then 24 rows
    with pytest.raises(exceptions.BadRequest):
        client.delete_batch_prediction_job(name=created.name)  # not ended yet
    client.cancel_batch_prediction_job(name=created.name)
    clock.now = t0 + 0.75
    assert client.get_batch_prediction_job(name=created.name).state == (
        JobState.JOB_STATE_CANCELLING
    )
    clock.now = t0 + 0.9
    done = client.get_batch_prediction_job(name=created.name)
    assert done.state == JobState.JOB_STATE_CANCELLED
    stats = done.completion_stats
    assert (stats.successful_count, stats.incomplete_count) == (24, 56)
    _, rows = rows_of(emulator, done)
    assert len(rows) == 24
    with pytest.raises(exceptions.BadRequest):
        client.cancel_batch_prediction_job(name=created.name)
    operation = client.delete_batch_prediction_job(name=created.name)
    assert operation.done() and operation.result() is not None
    with pytest.raises(exceptions.NotFound):
        client.get_batch_prediction_job(name=created.name)


def test_a_held_job_keeps_running_until_released(
    manual: Callable[..., tuple[VertexEmulatorHandle, ManualClock]],
) -> None:
    emulator, clock = manual(lines_per_second=10, hold_after_lines=5, rows_per_file=4)
    t0 = clock.now
    created = create(emulator, [line(f"q {i}", i) for i in range(1, 13)])
    client = emulator.client()
    for hours in (1, 30, 70):  # however late the test reads, the job waits
        clock.now = t0 + hours * 3600
        job = client.get_batch_prediction_job(name=created.name)
        assert job.state == JobState.JOB_STATE_RUNNING and not job.completion_stats
        assert emulator.wait_held(created.name)["emulator"]["output_files"] == []
    released_at = clock.now
    assert emulator.release() == [created.name.rsplit("/", 1)[-1]]
    clock.now = released_at + 0.65  # the 7 held rows follow at the same pace
    assert client.get_batch_prediction_job(name=created.name).state == JobState.JOB_STATE_RUNNING
    clock.now = released_at + 0.75
    done = client.get_batch_prediction_job(name=created.name)
    assert done.state == JobState.JOB_STATE_SUCCEEDED
    assert done.completion_stats.successful_count == 12
    assert done.end_time.timestamp() == pytest.approx(released_at + 0.7)
    files, rows = rows_of(emulator, done)
    assert len(files) == 3 and len(rows) == 12
    times = sorted(r["processed_time"] for r in rows)
    assert times[4] < times[5]  # the first held row ran after the release, not before

    held = create(emulator, [line(f"c {i}", i) for i in range(1, 13)])
    clock.now += 3600
    client.cancel_batch_prediction_job(name=held.name)
    clock.now += 60
    cancelled = client.get_batch_prediction_job(name=held.name)
    assert cancelled.state == JobState.JOB_STATE_CANCELLED
    assert cancelled.completion_stats.successful_count == 5


def test_expiry_keeps_the_rows_that_ran(vertex_emulator: VertexEmulatorHandle) -> None:
    vertex_emulator.admin({"lines_per_second": 30, "expire_after_seconds": 0.7})
    done = wait_ended(
        vertex_emulator, create(vertex_emulator, [line("q", i) for i in range(60)]).name
    )
    job = done[-1]
    assert job.state == JobState.JOB_STATE_EXPIRED
    assert 0 < job.completion_stats.successful_count < 60
    assert len(rows_of(vertex_emulator, job)[1]) == job.completion_stats.successful_count


def test_a_job_queued_past_its_window_expires_without_output(
    vertex_emulator: VertexEmulatorHandle,
) -> None:
    vertex_emulator.admin({"queued_seconds": 5, "expire_after_seconds": 0.3})
    seen = wait_ended(vertex_emulator, create(vertex_emulator, [line("q", 1)]).name)
    assert {s.state for s in seen[:-1]} == {JobState.JOB_STATE_QUEUED}
    assert seen[-1].state == JobState.JOB_STATE_EXPIRED
    assert seen[-1].completion_stats.incomplete_count == 1
    assert not seen[-1].output_info.gcs_output_directory


def admin_post(emulator: VertexEmulatorHandle, path: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{emulator.root_url}/_emulator/{path}",
        data=orjson.dumps(body),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_expire_on_demand_keeps_the_rows_that_ran(
    manual: Callable[..., tuple[VertexEmulatorHandle, ManualClock]],
) -> None:
    emulator, clock = manual(lines_per_second=10, hold_after_lines=4)
    t0 = clock.now
    created = create(emulator, [line(f"q {i}", i) for i in range(1, 11)])
    other = create(emulator, [line(f"o {i}", i) for i in range(1, 11)])
    job_id = created.name.rsplit("/", 1)[-1]
    clock.now = t0 + 3600
    assert emulator.expire(created.name) == [job_id]  # a name or an id
    client = emulator.client()
    job = client.get_batch_prediction_job(name=created.name)
    assert job.state == JobState.JOB_STATE_EXPIRED
    assert job.end_time.timestamp() == pytest.approx(t0 + 3600)
    stats = job.completion_stats
    assert (stats.successful_count, stats.failed_count, stats.incomplete_count) == (4, 0, 6)
    files, rows = rows_of(emulator, job)
    assert len(files) == 1 and len(rows) == 4 and all(r["status"] == "" for r in rows)
    assert client.get_batch_prediction_job(name=other.name).state == JobState.JOB_STATE_RUNNING

    status, body = admin_post(emulator, "expire", {"batch": job_id})
    assert status == 409 and body["error"]["status"] == "ABORTED"
    assert "JOB_STATE_EXPIRED" in body["error"]["message"]
    status, body = admin_post(emulator, "expire", {"batch": "123"})
    assert (status, body["error"]["status"]) == (404, "NOT_FOUND")
    # {} expires every job not ended, a queued one among them (nothing ran: no output).
    emulator.admin({"queued_seconds": 60})
    queued = create(emulator, [line("late", 1)])
    other_id, queued_id = other.name.rsplit("/", 1)[-1], queued.name.rsplit("/", 1)[-1]
    assert emulator.expire() == [other_id, queued_id]
    never_ran = client.get_batch_prediction_job(name=queued.name)
    assert never_ran.state == JobState.JOB_STATE_EXPIRED
    assert not never_ran.output_info.gcs_output_directory
    assert never_ran.completion_stats.incomplete_count == 1
    assert emulator.expire() == []


def test_expire_after_lines_expires_only_the_next_jobs(
    manual: Callable[..., tuple[VertexEmulatorHandle, ManualClock]],
) -> None:
    emulator, clock = manual(lines_per_second=10)
    config = emulator.admin({"expire_after_lines": 3, "expire_next_batches": 1})
    assert (config["expire_after_lines"], config["expire_next_batches"]) == (3, 1)
    t0 = clock.now
    first = create(emulator, [line(f"q {i}", i) for i in range(1, 11)])
    second = create(emulator, [line(f"s {i}", i) for i in range(1, 11)])
    assert emulator.admin({})["expire_next_batches"] == 0
    clock.now = t0 + 3600
    client = emulator.client()
    job = client.get_batch_prediction_job(name=first.name)
    assert job.state == JobState.JOB_STATE_EXPIRED
    assert (job.completion_stats.successful_count, job.completion_stats.incomplete_count) == (3, 7)
    assert job.end_time.timestamp() == pytest.approx(job.start_time.timestamp() + 0.3)
    assert len(rows_of(emulator, job)[1]) == 3
    assert client.get_batch_prediction_job(name=second.name).state == JobState.JOB_STATE_SUCCEEDED


def test_job_fail_next_fails_the_next_jobs_as_a_bad_input_does(
    manual: Callable[..., tuple[VertexEmulatorHandle, ManualClock]],
) -> None:
    emulator, clock = manual()
    emulator.admin({"job_fail_next": 1})
    t0 = clock.now
    failing = create(emulator, [line(f"q {i}", i) for i in range(1, 4)])
    normal = create(emulator, [line(f"n {i}", i) for i in range(1, 4)])
    assert failing.state == JobState.JOB_STATE_QUEUED
    assert emulator.admin({})["job_fail_next"] == 0
    clock.now = t0 + 60
    client = emulator.client()
    failed = client.get_batch_prediction_job(name=failing.name)
    assert failed.state == JobState.JOB_STATE_FAILED
    assert failed.error.code == 3 and "job_fail_next" in failed.error.message
    assert failing.input_config.gcs_source.uris[0] in failed.error.message
    assert not failed.output_info.gcs_output_directory  # nothing ran, nothing written
    stats = failed.completion_stats
    assert (stats.successful_count, stats.failed_count, stats.incomplete_count) == (0, 0, 3)
    assert client.get_batch_prediction_job(name=normal.name).state == JobState.JOB_STATE_SUCCEEDED


@pytest.mark.parametrize(
    ("status", "name"), [(500, "INTERNAL"), (503, "UNAVAILABLE"), (429, "RESOURCE_EXHAUSTED")]
)
def test_failed_rate_fails_rows_with_the_status_asked(
    vertex_emulator: VertexEmulatorHandle, status: int, name: str
) -> None:
    vertex_emulator.admin({"failed_rate": 0.5, "failed_status": status})
    created = create(vertex_emulator, [line(f"q {i}", i) for i in range(1, 41)])
    done = wait_ended(vertex_emulator, created.name)[-1]
    assert done.state == JobState.JOB_STATE_PARTIALLY_SUCCEEDED
    _, rows = rows_of(vertex_emulator, done)
    failed = [r for r in rows if r["status"]]
    assert 5 < len(failed) < 35 and done.completion_stats.failed_count == len(failed)
    for row in failed:
        assert "response" not in row and row_problems(row) == []
        error = orjson.loads(row["status"].split(": ", 1)[1])["error"]
        assert (error["code"], error["status"]) == (status, name)


# --------------------------------------------------------------------------- quota

FLASH = "publishers/google/models/gemini-2.5-flash"
PRO = "publishers/google/models/gemini-2.5-pro"


def job_limit_message(model: str, limit: int, active: int) -> str:
    return (
        "Quota exceeded for aiplatform.googleapis.com/concurrent_batch_prediction_jobs_per_"
        f"base_model with base model: {model}. Limit: {limit} concurrent jobs, {active} in "
        "use. Please try again once a batch prediction job has ended."
    )


def refused(emulator: VertexEmulatorHandle, model: str = FLASH) -> str:
    """Create a job that must be refused as over the concurrent-job limit; the message."""
    jobs_before = len(emulator.batches())
    with pytest.raises(exceptions.TooManyRequests) as info:
        create(emulator, [line("q", 1)], model=model)
    body = info.value.response.json()  # type: ignore[union-attr]
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "status"}
    assert (body["error"]["code"], body["error"]["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert len(emulator.batches()) == jobs_before  # no job was made
    message: str = body["error"]["message"]
    assert info.value.message.endswith(f": {message}")  # the SDK prefixes the request
    return message


def jobs_in_use(emulator: VertexEmulatorHandle, model: str = "gemini-2.5-flash") -> Any:
    entry = emulator.quota()["vertex"][model]
    return entry["concurrent_jobs"], entry["limit"]


def test_a_create_past_the_concurrent_job_limit_answers_429(
    manual: Callable[..., tuple[VertexEmulatorHandle, ManualClock]],
) -> None:
    emulator, clock = manual(
        queued_seconds=60, pending_seconds=3600, lines_per_second=10, concurrent_job_limit=2
    )
    t0 = clock.now
    first = create(emulator, [line(f"q {i}", i) for i in range(20)])  # runs 2 s
    create(emulator, [line(f"q {i}", i) for i in range(20)])
    assert jobs_in_use(emulator) == (2, 2)
    assert refused(emulator) == job_limit_message("gemini-2.5-flash", 2, 2)
    client = emulator.client()
    for at, state in (
        (30, JobState.JOB_STATE_QUEUED),
        (1800, JobState.JOB_STATE_PENDING),  # an hour in Vertex's queue: still counted
        (3661, JobState.JOB_STATE_RUNNING),
    ):
        clock.now = t0 + at
        assert client.get_batch_prediction_job(name=first.name).state == state
        assert jobs_in_use(emulator) == (2, 2)
        refused(emulator)
    clock.now = t0 + 3663  # both have succeeded
    assert client.get_batch_prediction_job(name=first.name).state == JobState.JOB_STATE_SUCCEEDED
    assert jobs_in_use(emulator) == (0, 2)
    create(emulator, [line("q", 1)])
    assert emulator.quota() == {
        "vertex": {"gemini-2.5-flash": {"concurrent_jobs": 1, "limit": 2}},
        "over_quota": 4,
    }


def test_concurrent_jobs_free_on_cancel_failure_and_expiry(
    manual: Callable[..., tuple[VertexEmulatorHandle, ManualClock]],
) -> None:
    emulator, clock = manual(
        queued_seconds=1, pending_seconds=1, hold_after_lines=0, cancel_seconds=5
    )
    emulator.admin({"concurrent_job_limit": 1})
    client = emulator.client()
    held = create(emulator, [line("q", 1)])
    clock.now += 3600  # held running: counted however long
    refused(emulator)
    client.cancel_batch_prediction_job(name=held.name)
    assert client.get_batch_prediction_job(name=held.name).state == JobState.JOB_STATE_CANCELLING
    assert jobs_in_use(emulator) == (0, 1)
    body = job_body(f"gs://{emulator.work_bucket}/missing/input.jsonl")
    missing = client.create_batch_prediction_job(parent=emulator.parent, batch_prediction_job=body)
    assert missing.state == JobState.JOB_STATE_QUEUED
    refused(emulator)  # a job that will fail counts while it waits
    clock.now += 2
    assert client.get_batch_prediction_job(name=missing.name).state == JobState.JOB_STATE_FAILED
    emulator.admin({"expire_after_seconds": 100})
    expiring = create(emulator, [line("q", 1)])
    clock.now += 99
    refused(emulator)
    clock.now += 1
    assert client.get_batch_prediction_job(name=expiring.name).state == JobState.JOB_STATE_EXPIRED
    create(emulator, [line("q", 1)])
    assert jobs_in_use(emulator) == (1, 1)


def test_concurrent_job_limits_per_model(
    manual: Callable[..., tuple[VertexEmulatorHandle, ManualClock]],
) -> None:
    emulator, _ = manual(hold_after_lines=0)  # every job stays running
    emulator.admin({"concurrent_job_limit": {"gemini-2.5-flash": 1, "*": 2}})
    create(emulator, [line("q", 1)], model=FLASH)
    assert refused(emulator, FLASH) == job_limit_message("gemini-2.5-flash", 1, 1)
    create(emulator, [line("q", 1)], model=PRO)
    create(emulator, [line("q", 1)], model=PRO)
    assert refused(emulator, PRO) == job_limit_message("gemini-2.5-pro", 2, 2)
    assert emulator.quota()["vertex"] == {
        "gemini-2.5-flash": {"concurrent_jobs": 1, "limit": 1},
        "gemini-2.5-pro": {"concurrent_jobs": 2, "limit": 2},
    }
    emulator.admin({"concurrent_job_limit": {"gemini-2.5-flash": 1}})  # no "*": pro is free
    create(emulator, [line("q", 1)], model=PRO)
    assert jobs_in_use(emulator, "gemini-2.5-pro") == (3, None)
    refused(emulator, FLASH)
    emulator.admin({"concurrent_job_limit": 4})  # one number: every model
    create(emulator, [line("q", 1)], model=PRO)
    refused(emulator, PRO)
    assert jobs_in_use(emulator, "gemini-2.5-flash") == (1, 4)


def test_quota_exceeded_next_refuses_creates_with_room(
    manual: Callable[..., tuple[VertexEmulatorHandle, ManualClock]],
) -> None:
    emulator, _ = manual(hold_after_lines=0, quota_exceeded_next=1)
    assert refused(emulator) == job_limit_message("gemini-2.5-flash", 0, 0)
    create(emulator, [line("q", 1)])
    config = emulator.admin({"quota_exceeded_next": 1, "concurrent_job_limit": 8})
    assert config["quota_exceeded_next"] == 1
    assert refused(emulator) == job_limit_message("gemini-2.5-flash", 8, 1)
    assert emulator.admin({})["quota_exceeded_next"] == 0
    create(emulator, [line("q", 1)])
    assert emulator.quota()["over_quota"] == 2


@pytest.mark.parametrize(
    ("overrides", "wanted"),
    [
        ({"concurrent_job_limit": -1}, "config concurrent_job_limit must be >= 0"),
        ({"concurrent_job_limit": 0.5}, "config concurrent_job_limit must be an integer"),
        ({"concurrent_job_limit": "8"}, "config concurrent_job_limit must be null, a number"),
        ({"concurrent_job_limit": {"gemini-2.5-pro": None}}, "gemini-2.5-pro must be a number"),
        ({"concurrent_job_limit": {"gemini-2.5-pro": 1.5}}, "gemini-2.5-pro must be an integer"),
        ({"quota_exceeded_next": 0.5}, "config quota_exceeded_next must be an integer"),
    ],
)
def test_quota_config_is_checked(
    vertex_emulator: VertexEmulatorHandle, overrides: dict[str, Any], wanted: str
) -> None:
    request = urllib.request.Request(
        f"{vertex_emulator.root_url}/_emulator/config",
        data=orjson.dumps(overrides),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 400
    error = orjson.loads(info.value.read())["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert wanted in error["message"]
    assert vertex_emulator.admin({})["concurrent_job_limit"] is None


# --------------------------------------------------------------------------- list


def test_list_pages_and_filters_on_labels(vertex_emulator: VertexEmulatorHandle) -> None:
    names = []
    for chunk in range(5):
        labels = {"batchline_job": "job-a" if chunk < 4 else "job-b", "batchline_chunk": str(chunk)}
        names.append(create(vertex_emulator, [line("q", 1)], labels=labels).name)
    client = vertex_emulator.client()
    everything = [
        j.name
        for j in client.list_batch_prediction_jobs(
            request={"parent": vertex_emulator.parent, "page_size": 2}
        )
    ]
    assert everything == names[::-1]  # newest first, over three pages
    pages = list(
        client.list_batch_prediction_jobs(
            request={"parent": vertex_emulator.parent, "page_size": 2}
        ).pages
    )
    assert [len(p.batch_prediction_jobs) for p in pages] == [2, 2, 1]
    found = client.list_batch_prediction_jobs(
        request={
            "parent": vertex_emulator.parent,
            "filter": 'labels.batchline_job="job-a" AND labels.batchline_chunk="2"',
        }
    )
    assert [j.name for j in found] == [names[2]]
    job_b = client.list_batch_prediction_jobs(
        request={"parent": vertex_emulator.parent, "filter": "labels.batchline_job=job-b"}
    )
    assert [j.name for j in job_b] == [names[4]]
    with pytest.raises(exceptions.BadRequest, match="Unsupported filter"):
        list(
            client.list_batch_prediction_jobs(
                request={"parent": vertex_emulator.parent, "filter": "create_time > 5"}
            )
        )
    other = client.list_batch_prediction_jobs(
        request={"parent": "projects/other/locations/us-central1"}
    )
    assert list(other) == []


# --------------------------------------------------------------------------- faults, wire


def test_api_faults_answer_google_errors(vertex_emulator: VertexEmulatorHandle) -> None:
    vertex_emulator.admin({"api_error_next": 1, "api_error_status": 503})
    with pytest.raises(exceptions.ServiceUnavailable):
        vertex_emulator.client().get_batch_prediction_job(
            name=f"{vertex_emulator.parent}/batchPredictionJobs/1"
        )
    with pytest.raises(exceptions.NotFound):
        vertex_emulator.client().get_batch_prediction_job(
            name=f"{vertex_emulator.parent}/batchPredictionJobs/1"
        )
    assert vertex_emulator.stats()["injected_errors"] == 1


class Recorder:
    """WSGI middleware that keeps every /v1 answer's body, with the request line."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.answers: list[tuple[str, str, str, bytes]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        body = b"".join(self.app(environ, start_response))
        if environ["PATH_INFO"].startswith("/v1/"):
            self.answers.append(
                (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"], body)
            )
        return [body]


def test_every_answer_is_exactly_the_sdks_type(vertex_emulator: VertexEmulatorHandle) -> None:
    """Every job, list and operation the emulator serves, in every state, parses strictly as
    the SDK's proto; the SDK's own parse (REST transport) reads the same answers."""
    # A clock the test moves, so that every state is served whatever this machine's speed.
    config = EmulatorConfig().merged(
        {
            **FAST_VERTEX_CONFIG,
            "queued_seconds": 0.3,
            "pending_seconds": 0.4,
            "cancel_seconds": 0.3,
            "lines_per_second": 200,
        }
    )
    clock = ManualClock()
    recorder = Recorder(make_app(config, storage_url=vertex_emulator.gcs_url, clock=clock))
    root, stop = start_in_thread(recorder)
    try:
        handle = VertexEmulatorHandle(
            recorder.app, root, vertex_emulator.gcs_url, vertex_emulator.blobs
        )
        client = handle.client()
        t0 = clock.now
        ok = create(handle, [line(f"q {i}", i) for i in range(30)])
        partial = create(handle, [line("x [emulator:fail=429]", 1), line("y", 2)])
        failed = create(handle, [{"request": {}}])
        canceled = create(handle, [line(f"q {i}", i) for i in range(200)])
        client.cancel_batch_prediction_job(name=canceled.name)
        client.get_batch_prediction_job(name=canceled.name)  # cancelling
        # queued, pending, running (ok ends at 0.85 s), every job ended
        for at in (0.1, 0.5, 0.8, 5.0):
            clock.now = t0 + at
            for job in (ok, partial, failed, canceled):
                client.get_batch_prediction_job(name=job.name)
        list(client.list_batch_prediction_jobs(request={"parent": handle.parent, "page_size": 3}))
        client.delete_batch_prediction_job(name=ok.name).result()
        assert not recorder.app.config.rows_per_file
    finally:
        stop()
    kinds: Counter[str] = Counter()
    for method, path, query, body in recorder.answers:
        assert "enum-encoding=int" in urllib.request.unquote(query), (method, path, query)
        data = orjson.loads(body)
        if method == "DELETE":
            kinds["operation"] += 1
            json_format.ParseDict(data, operations_pb2.Operation(), ignore_unknown_fields=False)
            assert data["done"] is True
        elif path.endswith(":cancel"):
            kinds["cancel"] += 1
            assert data == {}
        elif method == "GET" and path.endswith("/batchPredictionJobs"):
            kinds["list"] += 1
            assert message_problems(ListBatchPredictionJobsResponse, data) == []
        else:
            kinds["job"] += 1
            assert message_problems(BatchPredictionJob, data) == [], data
            assert isinstance(data["state"], int)  # enum-encoding=int, as the SDK asked
            for key, value in (data.get("completionStats") or {}).items():
                assert isinstance(value, str), key  # int64 as strings
    assert kinds["job"] > 8 and kinds["list"] == 2 and kinds["operation"] == 1
    assert kinds["cancel"] == 1
    states = {
        orjson.loads(b)["state"]
        for m, p, q, b in recorder.answers
        if (m == "GET" and "Jobs/" in p) or (m == "POST" and p.endswith("Jobs"))
    }
    assert {1, 2, 3, 4, 5, 6, 7, 11} <= states


def test_enums_by_name_without_the_int_encoding(vertex_emulator: VertexEmulatorHandle) -> None:
    created = create(vertex_emulator, [line("q", 1)])
    url = f"{vertex_emulator.root_url}/v1/{created.name}"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["x-emulator"] == "batchline-vertex"
        data = orjson.loads(response.read())
    assert data["state"].startswith("JOB_STATE_")
    assert message_problems(BatchPredictionJob, data) == []


def test_request_line_check_catches_what_vertex_would_refuse() -> None:
    assert request_line_problems(line("x", 1)) == []
    assert request_line_problems({"request": {"contents": [], "x": 1}})
    assert request_line_problems({**line("x", 1), "key": "k"})
    assert request_line_problems(line("x", 1, labels={"Team": "a"}))


# --------------------------------------------------------------------------- structured outputs

#: Recipe in Google's OpenAPI subset (int64 limits as strings, as the REST API sends them).
GOOGLE_RECIPE = {
    "type": "OBJECT",
    "properties": {
        "title": {"type": "STRING", "minLength": "3"},
        "servings": {"type": "INTEGER", "minimum": 1, "maximum": 12},
        "cuisine": {"type": "STRING", "format": "enum", "enum": ["italian", "thai", "mexican"]},
        "vegetarian": {"type": "BOOLEAN"},
        "ingredients": {
            "type": "ARRAY",
            "minItems": "1",
            "items": {
                "type": "OBJECT",
                "properties": {
                    "name": {"type": "STRING"},
                    "grams": {"type": "INTEGER", "minimum": 1, "maximum": 5000},
                },
                "required": ["name", "grams"],
            },
        },
        "rating": {"type": "NUMBER", "nullable": True, "minimum": 0, "maximum": 5},
    },
    "required": ["title", "servings", "cuisine", "vegetarian", "ingredients"],
    "propertyOrdering": ["vegetarian", "title", "servings", "cuisine", "ingredients", "rating"],
}


def json_line(text: str, n: int, *, repair: bool = False, **config: Any) -> dict[str, Any]:
    """A line asking for JSON (responseJsonSchema unless `config` says otherwise); a repair
    carries an earlier (wrong) model answer and the feedback."""
    config = config or {"responseJsonSchema": RECIPE_SCHEMA}
    result = line(text, n, generationConfig={"responseMimeType": "application/json", **config})
    if repair:
        result["request"]["contents"] += [
            {"role": "model", "parts": [{"text": '{"title": 7}'}]},
            {"role": "user", "parts": [{"text": "servings is required, title a string."}]},
        ]
    return result


def answers_by_id(emulator: VertexEmulatorHandle, lines: list[dict[str, Any]]) -> dict[str, Any]:
    done = wait_ended(emulator, create(emulator, lines).name)[-1]
    _, rows = rows_of(emulator, done)
    assert all(row_problems(r) == [] for r in rows), [row_problems(r) for r in rows]
    return {r["request"]["labels"]["batchline_request_id"]: r for r in rows}


def text_of(row: dict[str, Any]) -> str:
    text: str = row["response"]["candidates"][0]["content"]["parts"][0]["text"]
    return text


def test_json_mode_answers_json_valid_for_the_schema(vertex_emulator: VertexEmulatorHandle) -> None:
    lines = [json_line(f"A recipe with {i} eggs", i) for i in range(1, 5)]
    lines += [json_line("Google's schema", i, responseSchema=GOOGLE_RECIPE) for i in (5, 6)]
    lines.append(json_line("Any JSON", 7, responseMimeType="application/json"))
    lines.append(line("Proto names", 8, generation_config={
        "response_mime_type": "application/json", "response_json_schema": RECIPE_SCHEMA
    }))  # fmt: skip
    lines.append(line("Pick one", 9, generationConfig={
        "responseMimeType": "text/x.enum",
        "responseSchema": {"type": "STRING", "format": "enum", "enum": ["yes", "no"]},
    }))  # fmt: skip
    lines += [json_line("A recipe again", i, repair=True) for i in (10, 11)]
    lines.append(line("Just talk", 12, generationConfig={"stopSequences": ["nothing"]}))
    rows = answers_by_id(vertex_emulator, lines)
    schema_ids = ["bl-1", "bl-2", "bl-3", "bl-4", "bl-5", "bl-6", "bl-8", "bl-10", "bl-11"]
    kinds = {rid: answer_kind(text_of(rows[rid]), RECIPE_SCHEMA) for rid in schema_ids}
    assert_kinds(kinds, "valid")
    for rid in schema_ids:
        Recipe.model_validate_json(text_of(rows[rid]))
        usage = rows[rid]["response"]["usageMetadata"]
        assert usage["candidatesTokenCount"] == math.ceil(len(text_of(rows[rid])) / 4)
        assert (
            usage["promptTokenCount"]
            > rows["bl-12"]["response"]["usageMetadata"]["promptTokenCount"]
        )
        assert rows[rid]["response"]["candidates"][0]["finishReason"] == "STOP"
    assert list(orjson.loads(text_of(rows["bl-5"])))[:2] == ["vegetarian", "title"]
    assert answer_kind(text_of(rows["bl-7"]), None) == "valid"
    assert text_of(rows["bl-9"]) in ("yes", "no")
    assert text_of(rows["bl-12"]).startswith("[batchline vertex emulator]")
    recipes = {text_of(rows[rid]) for rid in schema_ids}
    assert len(recipes) == len(schema_ids)  # each request its own value

    again = answers_by_id(vertex_emulator, lines)
    assert {k: text_of(v) for k, v in again.items()} == {k: text_of(v) for k, v in rows.items()}


def test_invalid_answer_rate_spoils_first_answers_only(
    vertex_emulator: VertexEmulatorHandle,
) -> None:
    vertex_emulator.admin({"invalid_answer_rate": 1.0})
    lines = [json_line(f"Recipe {i}", i) for i in range(1, 10)]
    lines += [json_line(f"Recipe {i}", i, repair=True) for i in range(10, 13)]
    lines.append(line("Just talk", 13))
    rows = answers_by_id(vertex_emulator, lines)
    first = {f"bl-{i}": answer_kind(text_of(rows[f"bl-{i}"]), RECIPE_SCHEMA) for i in range(1, 10)}
    assert_kinds(first, "invalid")
    assert Counter(first.values()) == {"wrong_type": 3, "missing_field": 3, "not_json": 3}
    repairs = {rid: answer_kind(text_of(rows[rid]), RECIPE_SCHEMA) for rid in ("bl-10", "bl-11")}
    assert_kinds(repairs, "valid")
    assert text_of(rows["bl-13"]).startswith("[batchline vertex emulator]")
    for i in range(1, 10):
        usage = rows[f"bl-{i}"]["response"]["usageMetadata"]
        assert usage["candidatesTokenCount"] == math.ceil(len(text_of(rows[f"bl-{i}"])) / 4)


def test_invalid_answer_rate_picks_by_request_id(vertex_emulator: VertexEmulatorHandle) -> None:
    lines = [json_line("Recipe", i) for i in range(1, 41)]

    def invalid_ids(rows: dict[str, Any]) -> set[str]:
        return {rid for rid, r in rows.items() if answer_kind(text_of(r), RECIPE_SCHEMA) != "valid"}

    assert invalid_ids(answers_by_id(vertex_emulator, lines)) == set()  # the default is 0
    vertex_emulator.admin({"invalid_answer_rate": 0.5})
    picked = invalid_ids(answers_by_id(vertex_emulator, lines))
    assert 8 < len(picked) < 32
    assert invalid_ids(answers_by_id(vertex_emulator, lines[::-1])) == picked

    # Without the label a row is named by its position and content: still deterministic.
    unlabeled = [json_line("Recipe", i) for i in range(1, 21)]
    for entry in unlabeled:
        del entry["request"]["labels"]
    texts = []
    for _ in range(2):
        done = wait_ended(vertex_emulator, create(vertex_emulator, unlabeled).name)[-1]
        _, rows = rows_of(vertex_emulator, done)
        texts.append(sorted(text_of(r) for r in rows))
    assert texts[0] == texts[1]
    assert 0 < sum(answer_kind(t, RECIPE_SCHEMA) != "valid" for t in texts[0]) < 20


def test_schema_settings_are_checked(vertex_emulator: VertexEmulatorHandle) -> None:
    lines = [
        line("no mime", 1, generationConfig={"responseJsonSchema": RECIPE_SCHEMA}),
        json_line("both", 2, responseJsonSchema=RECIPE_SCHEMA, responseSchema=GOOGLE_RECIPE),
        json_line("fine", 3),
    ]
    done = wait_ended(vertex_emulator, create(vertex_emulator, lines).name)[-1]
    assert done.state == JobState.JOB_STATE_PARTIALLY_SUCCEEDED
    _, rows = rows_of(vertex_emulator, done)
    failed = {
        r["request"]["labels"]["batchline_request_id"]: r["status"] for r in rows if r["status"]
    }
    assert set(failed) == {"bl-1", "bl-2"}
    assert "responseMimeType" in failed["bl-1"] and "INVALID_ARGUMENT" in failed["bl-1"]
    assert "cannot both be set" in failed["bl-2"]
