"""VertexProvider against the Vertex emulator over fake-gcs-server, and every request line it
writes against the SDK's own `GenerateContentRequest` (unknown fields are an error).

What every provider must do alike is in test_provider_conformance.py; this module covers
what is Vertex's own: the job made over the staged payload (nothing uploaded twice),
labels, output read from GCS across several prediction files, failed jobs, the error
mapping, and choosing the emulator or the real service by configuration.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from batchline.adapters.providers.vertex import VertexProvider, output_prefix, regional_endpoint
from batchline.bootstrap import make_client
from batchline.config import Settings
from batchline.domain.models import BatchState, BatchTag, ProviderBatch, ResultStatus
from batchline.domain.providers.vertex import encode
from batchline.domain.requests import Request, parse_line
from batchline.domain.schemas import Validator
from batchline.errors import ProviderError
from batchline.ports import StagedPayload
from batchline_tools.local.processes import free_port
from batchline_tools.memory import MemoryBlobStore

from .conftest import WAIT_SECONDS, VertexEmulatorHandle
from .vertex_types import request_line_problems

pytestmark = pytest.mark.integration

MODEL = "gemini-2.5-flash"


def parse(line: int, obj: dict[str, Any], default_model: str | None = None) -> Request:
    parsed = parse_line(line, orjson.dumps(obj), default_model=default_model, max_line_bytes=10**6)
    assert isinstance(parsed, Request), parsed
    return parsed


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def simple(n: int) -> bytes:
    return b"".join(
        encode(parse(i, {"model": f"vertex/{MODEL}", "messages": user(f"q {i}")}))
        for i in range(1, n + 1)
    )


def wait_ended(
    provider: VertexProvider, batch_id: str, timeout: float = WAIT_SECONDS
) -> ProviderBatch:
    deadline = time.monotonic() + timeout
    while True:
        batch = provider.get_batch(batch_id)
        if batch.state.ended:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.state}"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _clean(vertex_emulator: VertexEmulatorHandle) -> Iterator[None]:
    vertex_emulator.reset()
    yield
    vertex_emulator.reset()


@pytest.fixture
def provider(vertex_emulator: VertexEmulatorHandle) -> VertexProvider:
    return VertexProvider(
        vertex_emulator.project,
        vertex_emulator.location,
        vertex_emulator.blobs,
        api_endpoint=vertex_emulator.api_endpoint,
        timeout_seconds=10,
    )


# --------------------------------------------------------------------------- submit


def test_the_job_reads_the_staged_payload_in_place(
    provider: VertexProvider, vertex_emulator: VertexEmulatorHandle
) -> None:
    requests = [
        parse(
            1,
            {
                "model": f"vertex/{MODEL}",
                "system": "Be brief.",
                "messages": [
                    {"role": "user", "content": "Say hi"},
                    {"role": "assistant", "content": "hi"},
                    {"role": "user", "content": [{"type": "text", "text": "again"}]},
                ],
                "max_tokens": 16,
                "temperature": 0.2,
                "stop": ["\n\n"],
                "metadata": {"mine": 1},
            },
        ),
        parse(
            2,
            {
                "key": "native/1",
                "request": {
                    "contents": [{"role": "user", "parts": [{"text": "native"}]}],
                    "generationConfig": {"maxOutputTokens": 5, "topK": 3},
                    "labels": {"team": "search"},
                },
            },
            default_model=f"vertex/{MODEL}",
        ),
        parse(4, {"model": f"vertex/{MODEL}", "messages": user("breaks [emulator:fail=500]")}),
    ]
    data = b"".join(encode(r) for r in requests)
    staged = vertex_emulator.stage(data, "jobs/job-0123456789abcdef/chunks/00003")
    before = set(vertex_emulator.blobs.list_prefix(f"gs://{vertex_emulator.work_bucket}/"))
    tag = BatchTag("job-0123456789abcdef", 3)

    batch = provider.create_batch(staged, tag, MODEL)
    assert batch.tag == tag and batch.state is BatchState.QUEUED
    native = batch.native
    assert native["inputConfig"] == {
        "instancesFormat": "jsonl",
        "gcsSource": {"uris": [staged.uri]},
    }
    assert native["outputConfig"]["gcsDestination"]["outputUriPrefix"] == output_prefix(staged.uri)
    assert output_prefix(staged.uri) == (
        f"gs://{vertex_emulator.work_bucket}/jobs/job-0123456789abcdef/chunks/00003/"
    )
    assert native["model"] == f"publishers/google/models/{MODEL}"
    assert native["labels"] == {"batchline_job": "job-0123456789abcdef", "batchline_chunk": "3"}
    assert native["displayName"] == "batchline-job-0123456789abcdef-00003"
    # Nothing was uploaded: the job reads the object planning staged.
    assert set(vertex_emulator.blobs.list_prefix(f"gs://{vertex_emulator.work_bucket}/")) == before
    received = vertex_emulator.requests(batch.batch_id)

    def rid(line: dict[str, Any]) -> str:
        return str(line["request"]["labels"]["batchline_request_id"])

    sent = [orjson.loads(x) for x in data.splitlines()]
    assert sorted(({"request": r} for r in received), key=rid) == sorted(sent, key=rid)
    assert [p for r in received for p in request_line_problems({"request": r})] == []

    batch = wait_ended(provider, batch.batch_id)
    assert batch.state is BatchState.COMPLETED
    assert batch.counts == {"total": 3, "completed": 2, "failed": 1}
    by_id = {r.request_id: r for r in provider.iter_results(batch)}
    assert set(by_id) == {"bl-1", "bl-2", "bl-4"}
    assert by_id["bl-1"].status is ResultStatus.SUCCEEDED and by_id["bl-1"].text
    assert by_id["bl-1"].finish_reason == "STOP"
    assert by_id["bl-4"].status is ResultStatus.FAILED and by_id["bl-4"].error is not None
    assert by_id["bl-4"].error["type"] == "internal" and by_id["bl-4"].error["retryable"]


#: Google's spelling (upper-case types, nullable, int64 as a string, Gemini formats).
RECIPE = {
    "type": "OBJECT",
    "properties": {
        "dish": {"type": "STRING"},
        "servings": {"type": "INTEGER", "format": "int32", "minimum": 1, "maximum": 12},
        "steps": {"type": "ARRAY", "items": {"type": "STRING"}, "minItems": "2"},
        "note": {"type": "STRING", "nullable": True},
    },
    "required": ["dish", "servings", "steps"],
    "propertyOrdering": ["dish", "servings", "steps"],
}


def test_answers_to_a_native_response_schema_are_validated_against_its_translation(
    provider: VertexProvider, vertex_emulator: VertexEmulatorHandle
) -> None:
    """The emulator answers Google's Schema by its own reading of it; ours must agree that
    its valid answers are valid and its spoiled ones are not."""
    vertex_emulator.admin({"invalid_answer_rate": 0.5})
    config = {"responseMimeType": "application/json", "responseSchema": RECIPE}
    requests = [
        parse(
            i,
            {
                "key": f"r{i}",
                "request": {
                    "contents": [{"role": "user", "parts": [{"text": f"recipe {i}"}]}],
                    "generationConfig": config,
                },
            },
            default_model=f"vertex/{MODEL}",
        )
        for i in range(1, 21)
    ]
    schema = requests[0].schema
    assert schema is not None
    staged = vertex_emulator.stage(
        b"".join(encode(r) for r in requests), "jobs/job-00000000000000000000000a/chunks/00000"
    )
    batch = wait_ended(
        provider, provider.create_batch(staged, BatchTag("job-a", 0), MODEL).batch_id
    )
    validator = Validator(schema)
    verdicts = {
        r.request_id: validator.check(r.text, r.structured).violation is None
        for r in provider.iter_results(batch)
    }
    assert len(verdicts) == 20
    assert set(verdicts.values()) == {True, False}  # the valid ones pass, the spoiled fail


def test_a_payload_outside_gcs_is_refused(provider: VertexProvider) -> None:
    with pytest.raises(ProviderError, match="reads its input from GCS") as caught:
        provider.create_batch(StagedPayload.of_bytes(simple(1)), BatchTag("j", 0), MODEL)
    assert caught.value.retryable is False


# --------------------------------------------------------------------------- results


def test_output_split_across_many_files_is_read_completely(
    provider: VertexProvider, vertex_emulator: VertexEmulatorHandle
) -> None:
    vertex_emulator.admin({"rows_per_file": 7})
    batch = provider.create_batch(
        vertex_emulator.stage(simple(60)), BatchTag("job-split", 0), MODEL
    )
    batch = wait_ended(provider, batch.batch_id)
    directory = batch.native["outputInfo"]["gcsOutputDirectory"]
    files = list(vertex_emulator.blobs.list_prefix(directory + "/"))
    assert len(files) == 9
    # A stray object beside them is not a prediction file.
    vertex_emulator.blobs.write_bytes(directory + "/errors_stats.jsonl", b"{}\n", "text/plain")
    order = [r.request_id for r in provider.iter_results(batch)]
    expected = [f"bl-{i}" for i in range(1, 61)]
    assert sorted(order) == sorted(expected) and order != expected


def test_a_failed_job_has_no_rows_and_says_why(
    provider: VertexProvider, vertex_emulator: VertexEmulatorHandle
) -> None:
    batch = provider.create_batch(
        vertex_emulator.stage(simple(3)), BatchTag("job-f", 0), "gemini-0"
    )
    batch = wait_ended(provider, batch.batch_id)
    assert batch.state is BatchState.FAILED
    assert batch.errors and batch.errors[0].startswith("NOT_FOUND: Publisher Model")
    assert list(provider.iter_results(batch)) == []


def test_a_job_failed_on_demand_says_why(
    provider: VertexProvider, vertex_emulator: VertexEmulatorHandle
) -> None:
    vertex_emulator.admin({"job_fail_next": 1})
    staged = vertex_emulator.stage(simple(3))
    batch = wait_ended(
        provider, provider.create_batch(staged, BatchTag("job-f", 0), MODEL).batch_id
    )
    assert batch.state is BatchState.FAILED
    [error] = batch.errors
    assert error.startswith("INVALID_ARGUMENT: Emulated job failure (job_fail_next)")
    assert staged.uri in error
    assert list(provider.iter_results(batch)) == []


def test_a_job_expired_half_done_keeps_the_rows_that_ran(
    provider: VertexProvider, vertex_emulator: VertexEmulatorHandle
) -> None:
    # 4 rows run, then the job waits until the test expires it: no clock to race. Rows
    # that never ran are not written; collect accounts for them as expired.
    vertex_emulator.admin({"hold_after_lines": 4})
    made = provider.create_batch(vertex_emulator.stage(simple(10)), BatchTag("job-e", 0), MODEL)
    vertex_emulator.wait_held(made.batch_id)
    assert vertex_emulator.expire(made.batch_id) == [made.batch_id.rsplit("/", 1)[-1]]
    batch = provider.get_batch(made.batch_id)
    assert batch.state is BatchState.EXPIRED
    results = list(provider.iter_results(batch))
    assert len(results) == 4 and len({r.request_id for r in results}) == 4
    assert all(r.status is ResultStatus.SUCCEEDED and r.text for r in results)


def test_transient_row_failures_are_retryable(
    provider: VertexProvider, vertex_emulator: VertexEmulatorHandle
) -> None:
    vertex_emulator.admin({"failed_rate": 0.5, "failed_status": 503})
    made = provider.create_batch(vertex_emulator.stage(simple(20)), BatchTag("job-r", 0), MODEL)
    batch = wait_ended(provider, made.batch_id)
    assert batch.state is BatchState.COMPLETED  # PARTIALLY_SUCCEEDED: the rows say which
    results = list(provider.iter_results(batch))
    failed = [r for r in results if r.status is ResultStatus.FAILED]
    assert len(results) == 20 and 0 < len(failed) < 20
    for result in failed:
        assert result.error is not None and result.error["retryable"] is True
        assert "UNAVAILABLE" in result.error["type"] + result.error["message"]


def test_rows_without_the_label_come_back_without_an_id() -> None:
    blobs = MemoryBlobStore()
    directory = "gs://w/jobs/j/chunks/00000/prediction-model-x"
    row = {"status": "", "processed_time": "t", "request": {"contents": []}, "response": {}}
    blobs.write_bytes(f"{directory}/predictions.jsonl", orjson.dumps(row) + b"\n", "x")
    provider = VertexProvider("p", "us-central1", blobs, api_endpoint="http://127.0.0.1:1")
    batch = ProviderBatch(
        "n", BatchState.COMPLETED, {}, native={"outputInfo": {"gcsOutputDirectory": directory}}
    )
    [result] = provider.iter_results(batch)
    assert result.request_id == ""  # collect reports the request as missing, never guesses


# --------------------------------------------------------------------------- reconcile


def test_find_batches_by_labels(
    provider: VertexProvider, vertex_emulator: VertexEmulatorHandle
) -> None:
    started = time.time()
    made = {
        tag: provider.create_batch(vertex_emulator.stage(simple(2)), tag, MODEL)
        for tag in (BatchTag("job-a", 0), BatchTag("job-a", 1), BatchTag("job-b", 0))
    }
    for tag, batch in made.items():
        assert [b.batch_id for b in provider.find_batches(tag, started - 5, time.time(), 2)] == [
            batch.batch_id
        ]
    assert provider.find_batches(BatchTag("job-a", 2), started - 5, time.time(), 2) == []
    assert provider.find_batches(BatchTag("job-a", 0), time.time() + 60, time.time() + 90, 2) == []
    again = provider.create_batch(vertex_emulator.stage(simple(2)), BatchTag("job-a", 0), MODEL)
    [newest] = provider.find_batches(BatchTag("job-a", 0), started - 5, time.time(), 2)
    assert newest.batch_id == again.batch_id


# --------------------------------------------------------------------------- errors


def test_idempotent_calls_are_retried_and_create_is_not(
    provider: VertexProvider, vertex_emulator: VertexEmulatorHandle
) -> None:
    batch = provider.create_batch(vertex_emulator.stage(simple(1)), BatchTag("job-e", 0), MODEL)
    vertex_emulator.admin({"api_error_next": 2, "api_error_status": 503})
    assert provider.get_batch(batch.batch_id).batch_id == batch.batch_id
    vertex_emulator.admin({"api_error_next": 1, "api_error_status": 429})
    with pytest.raises(ProviderError) as caught:
        provider.create_batch(vertex_emulator.stage(simple(1)), BatchTag("job-e", 1), MODEL)
    assert caught.value.retryable is True and caught.value.status == 429
    with pytest.raises(ProviderError) as refused:
        provider.get_batch(f"{provider.parent}/batchPredictionJobs/123")
    assert refused.value.retryable is False and refused.value.status == 404


def test_cancel_an_ended_job_is_a_no_op(
    provider: VertexProvider, vertex_emulator: VertexEmulatorHandle
) -> None:
    batch = provider.create_batch(vertex_emulator.stage(simple(1)), BatchTag("job-c", 0), MODEL)
    wait_ended(provider, batch.batch_id)
    provider.cancel(batch.batch_id)
    assert provider.get_batch(batch.batch_id).state is BatchState.COMPLETED


def test_an_unreachable_endpoint_is_retryable(vertex_emulator: VertexEmulatorHandle) -> None:
    provider = VertexProvider(
        "p", "us-central1", vertex_emulator.blobs, f"http://127.0.0.1:{free_port()}", 2
    )
    with pytest.raises(ProviderError) as caught:
        provider.create_batch(vertex_emulator.stage(simple(1)), BatchTag("j", 0), MODEL)
    assert caught.value.retryable is True


# --------------------------------------------------------------------------- configuration


def settings(**env: str) -> Settings:
    base = {
        "GOOGLE_CLOUD_PROJECT": "proj",
        "BATCHLINE_INPUT_BUCKET": "i",
        "BATCHLINE_OUTPUT_BUCKET": "o",
        "BATCHLINE_WORK_BUCKET": "w",
    }
    return Settings.from_env({**base, **env})


def test_an_http_endpoint_is_the_emulator(vertex_emulator: VertexEmulatorHandle) -> None:
    client = make_client(
        "vertex",
        settings(BATCHLINE_VERTEX_API_ENDPOINT=vertex_emulator.api_endpoint),
        MemoryBlobStore(),
    )
    assert isinstance(client, VertexProvider) and client.emulated
    assert client.parent == "projects/proj/locations/us-central1"
    sdk = client._client
    assert type(sdk._transport).__name__ == "JobServiceRestTransport"
    assert sdk._transport._host == vertex_emulator.api_endpoint


def test_without_an_endpoint_it_is_the_regional_service(monkeypatch: pytest.MonkeyPatch) -> None:
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    # Default credentials, as on Cloud Run (stood in for: this machine has none).
    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), "proj"))
    client = make_client(
        "vertex",
        settings(BATCHLINE_VERTEX_LOCATION="europe-west4", BATCHLINE_VERTEX_PROJECT="other"),
        MemoryBlobStore(),
    )
    assert isinstance(client, VertexProvider) and not client.emulated
    assert client.parent == "projects/other/locations/europe-west4"
    sdk = client._client
    assert type(sdk._transport).__name__ == "JobServiceGrpcTransport"
    assert sdk._transport._host == "europe-west4-aiplatform.googleapis.com:443"
    assert regional_endpoint("global") == "aiplatform.googleapis.com"


def test_vertex_limits_and_settings() -> None:
    s = settings(BATCHLINE_VERTEX_MAX_REQUESTS="10", BATCHLINE_VERTEX_MAX_BYTES="5000")
    limits = s.provider("vertex").limits
    assert (limits.max_requests, limits.max_bytes) == (10, 5000)
    defaults = settings().provider("vertex")
    assert defaults.limits.max_requests == 190_000
    assert defaults.limits.max_bytes == 950_000_000
    assert defaults.location == "us-central1" and defaults.project is None
    assert defaults.api_endpoint is None
