"""OpenAIProvider against the OpenAI Batch API emulator, and the encoder against the spec.

The adapter talks to the emulator through the official SDK over HTTP, exactly as it talks
to api.openai.com; request bodies are checked against `CreateChatCompletionRequest` from
OpenAI's OpenAPI spec (tests/data/openai/openapi.yaml).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from batchline.adapters.providers.openai import UPLOAD_TTL_SECONDS, OpenAIProvider
from batchline.domain.models import BatchState, BatchTag, ProviderBatch, ResultStatus
from batchline.domain.providers.openai import encode
from batchline.domain.requests import InvalidLine, Request, parse_line
from batchline.errors import ProviderError
from batchline.ports import StagedPayload
from batchline_emulators._wsgi import start_in_thread
from batchline_emulators.openai import CONTENT_PREFIX, EmulatorConfig, make_app
from batchline_tools.local.processes import free_port

from .conftest import WAIT_SECONDS, ManualClock

pytestmark = pytest.mark.integration

SPEC_PATH = Path(__file__).resolve().parents[1] / "data" / "openai" / "openapi.yaml"
MODEL = "gpt-4.1-mini"
CHAT = "/v1/chat/completions"


# --------------------------------------------------------------------------- helpers


def parse(line: int, obj: dict[str, Any], default_model: str | None = None) -> Request:
    parsed = parse_line(line, orjson.dumps(obj), default_model=default_model, max_line_bytes=10**6)
    assert isinstance(parsed, Request), parsed
    return parsed


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def batchline_line(text: str, **fields: Any) -> dict[str, Any]:
    return {"model": f"openai/{MODEL}", "messages": user(text), **fields}


def native_line(text: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": "native-" + "-".join(text.split())[:40],
        "method": "POST",
        "url": CHAT,
        "body": {"model": MODEL, "messages": user(text), **body},
    }


def payload(requests: list[Request]) -> StagedPayload:
    return StagedPayload.of_bytes(b"".join(encode(r) for r in requests))


def simple_requests(n: int, first_line: int = 1) -> list[Request]:
    return [parse(first_line + i, batchline_line(f"question {i}")) for i in range(n)]


def wait_ended(
    provider: OpenAIProvider, batch_id: str, timeout: float = WAIT_SECONDS
) -> ProviderBatch:
    deadline = time.monotonic() + timeout
    while True:
        batch = provider.get_batch(batch_id)
        if batch.state.ended:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.state}"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _clean(openai_emulator: Any) -> Iterator[None]:
    openai_emulator.reset()
    yield
    openai_emulator.reset()


@pytest.fixture
def provider(openai_emulator: Any) -> OpenAIProvider:
    return OpenAIProvider("sk-emulator", base_url=openai_emulator.base_url, timeout_seconds=10)


# --------------------------------------------------------------------------- submit, results


def test_submit_poll_and_collect(provider: OpenAIProvider, openai_emulator: Any) -> None:
    requests = [
        parse(
            1,
            batchline_line(
                "Say hi", system="Be brief.", max_tokens=16, temperature=0.2, stop=["\n\n"]
            ),
        ),
        parse(2, native_line("native question", max_completion_tokens=5, seed=7)),
        parse(4, batchline_line("this one breaks [emulator:fail=500]", custom_id="boom")),
        parse(5, native_line("this one is refused [emulator:fail=400]")),
        parse(9, {"messages": user("default model")}, default_model=f"openai/{MODEL}"),
    ]
    data = b"".join(encode(r) for r in requests)
    tag = BatchTag("job-0123456789abcdef", 3)

    batch = provider.create_batch(StagedPayload.of_bytes(data), tag, MODEL)
    assert batch.tag == tag
    assert batch.state in (BatchState.QUEUED, BatchState.RUNNING)
    assert batch.native["metadata"] == {
        "batchline_job": "job-0123456789abcdef",
        "batchline_chunk": "3",
    }
    assert (batch.native["endpoint"], batch.native["completion_window"]) == (CHAT, "24h")
    assert batch.created_at is not None and abs(batch.created_at - time.time()) < 5
    client = openai_emulator.client()
    uploaded = client.files.retrieve(batch.native["input_file_id"])
    assert (uploaded.filename, uploaded.purpose) == ("job-0123456789abcdef-00003.jsonl", "batch")
    assert client.files.content(uploaded.id).content == data  # the payload, byte for byte

    ended = wait_ended(provider, batch.batch_id)
    assert ended.state is BatchState.COMPLETED
    assert ended.tag == tag and ended.errors == ()
    assert ended.counts == {"total": 5, "completed": 3, "failed": 2}

    results = list(provider.iter_results(ended))
    by_id = {r.request_id: r for r in results}
    assert len(results) == len(by_id) == 5  # one result per request, no duplicates
    assert set(by_id) == {"bl-1", "bl-2", "bl-4", "bl-5", "bl-9"}
    for rid in ("bl-1", "bl-2", "bl-9"):
        ok = by_id[rid]
        assert ok.status is ResultStatus.SUCCEEDED and ok.error is None
        assert ok.text and (
            ok.text.startswith(CONTENT_PREFIX) or CONTENT_PREFIX.startswith(ok.text)
        )
        assert ok.usage is not None and ok.usage["input_tokens"] > 0
        assert ok.usage["output_tokens"] > 0
        assert ok.response["object"] == "chat.completion"
        assert ok.response["model"].startswith(MODEL)
        assert ok.text == ok.response["choices"][0]["message"]["content"]
    # max_completion_tokens=5 (native) cut the answer short.
    assert (by_id["bl-2"].finish_reason, by_id["bl-2"].usage) == (
        "length",
        {
            "input_tokens": by_id["bl-2"].usage["input_tokens"],
            "output_tokens": 5,
            "cached_input_tokens": 0,
        },
    )
    assert by_id["bl-9"].finish_reason == "stop"
    server_error = by_id["bl-4"]
    assert server_error.status is ResultStatus.FAILED and server_error.text is None
    assert server_error.error is not None and server_error.error["retryable"] is True
    assert server_error.error["type"] == "server_error"
    refused = by_id["bl-5"]
    assert refused.status is ResultStatus.FAILED
    assert refused.error is not None and refused.error["retryable"] is False
    assert refused.error["type"] == "invalid_request_error"
    assert refused.response["error"]["message"] == refused.error["message"]


def test_iter_results_reads_a_large_output_file(
    provider: OpenAIProvider, openai_emulator: Any
) -> None:
    """Hundreds of lines arrive in many network reads: lines split across reads must be
    joined again, and none lost or duplicated."""
    requests = [parse(i, batchline_line(f"question {i} " + "x" * (i % 50))) for i in range(1, 401)]
    batch = wait_ended(
        provider, provider.create_batch(payload(requests), BatchTag("job-big", 0), MODEL).batch_id
    )
    assert batch.state is BatchState.COMPLETED
    results = list(provider.iter_results(batch))
    assert Counter(r.request_id for r in results) == Counter(f"bl-{i}" for i in range(1, 401))
    assert all(r.status is ResultStatus.SUCCEEDED for r in results)


def test_iter_results_of_a_batch_that_never_ran(
    provider: OpenAIProvider, openai_emulator: Any
) -> None:
    """A batch that failed validation has neither file: no results, and its errors."""
    bad = StagedPayload.of_bytes(
        b'{"custom_id": "bl-1", "method": "GET", "url": "/v1/chat/completions"}\n'
    )
    batch = wait_ended(provider, provider.create_batch(bad, BatchTag("job-bad", 0), MODEL).batch_id)
    assert batch.state is BatchState.FAILED
    assert batch.errors and all("(line 1)" in e for e in batch.errors)
    assert list(provider.iter_results(batch)) == []


# --------------------------------------------------------------------------- uploads ahead


def unopenable() -> StagedPayload:
    """A payload that must not be read: the batch is made from an upload."""

    def refuse() -> Any:
        raise AssertionError("the payload was read again")

    return StagedPayload("gs://work/jobs/j/chunks/0/input.jsonl", 1, refuse)


def batch_files(openai_emulator: Any) -> list[Any]:
    return list(openai_emulator.client().files.list(purpose="batch"))


def test_an_upload_ahead_expires_and_its_batch_is_made_without_a_second_upload(
    provider: OpenAIProvider, openai_emulator: Any
) -> None:
    tag = BatchTag("job-0123456789abcdef", 7)
    file_id = provider.upload_input(payload(simple_requests(3)), tag)
    [stored] = batch_files(openai_emulator)
    assert stored.id == file_id and stored.filename == "job-0123456789abcdef-00007.jsonl"
    assert stored.expires_at == stored.created_at + UPLOAD_TTL_SECONDS == stored.created_at + 604800
    batch = provider.create_batch(unopenable(), tag, MODEL, uploaded=file_id)
    assert batch.native["input_file_id"] == file_id and batch.tag == tag
    assert [f.id for f in batch_files(openai_emulator)] == [file_id]  # no second upload
    ended = wait_ended(provider, batch.batch_id)
    results = list(provider.iter_results(ended))
    assert sorted(r.request_id for r in results) == ["bl-1", "bl-2", "bl-3"]
    assert {r.status for r in results} == {ResultStatus.SUCCEEDED}
    # One file feeds several batches (a chunk sent again after its quota refused it).
    again = provider.create_batch(unopenable(), tag, MODEL, uploaded=file_id)
    assert again.native["input_file_id"] == file_id and again.batch_id != batch.batch_id


def test_a_batch_from_a_deleted_upload_is_made_from_a_fresh_one(
    provider: OpenAIProvider, openai_emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tag = BatchTag("job-gone", 0)
    staged = payload(simple_requests(2))
    file_id = provider.upload_input(staged, tag)
    provider.discard_input(file_id)
    assert batch_files(openai_emulator) == []
    provider.discard_input(file_id)  # gone already: fine
    batch = provider.create_batch(staged, tag, MODEL, uploaded=file_id)
    [fresh] = batch_files(openai_emulator)
    assert batch.native["input_file_id"] == fresh.id != file_id
    assert fresh.expires_at == fresh.created_at + UPLOAD_TTL_SECONDS
    assert "the input uploaded ahead is gone; uploading it again" in caplog.messages
    ended = wait_ended(provider, batch.batch_id)
    assert len(list(provider.iter_results(ended))) == 2


def test_a_create_refused_otherwise_is_not_uploaded_again(
    provider: OpenAIProvider, openai_emulator: Any
) -> None:
    tag = BatchTag("job-refused", 0)
    file_id = provider.upload_input(payload(simple_requests(2)), tag)
    openai_emulator.admin({"api_error_next": 1, "api_error_status": 400})
    with pytest.raises(ProviderError) as info:
        provider.create_batch(unopenable(), tag, MODEL, uploaded=file_id)
    assert info.value.status == 400 and not info.value.retryable
    assert [f.id for f in batch_files(openai_emulator)] == [file_id]


# --------------------------------------------------------------------------- find_batches


def find(provider: OpenAIProvider, tag: BatchTag, created_after: float) -> ProviderBatch | None:
    """The tagged batch: OpenAI's tag is exact, so neither the end of the window nor the
    request count (both given wrong here on purpose) may matter."""
    found = provider.find_batches(tag, created_after, created_before=0.0, request_count=-1)
    assert len(found) <= 1
    return found[0] if found else None


def test_find_batches_by_tag(provider: OpenAIProvider, openai_emulator: Any) -> None:
    client = openai_emulator.client()
    tags = [BatchTag("job-a", 0), BatchTag("job-a", 1), BatchTag("job-b", 0)]
    submitted = {}
    for n, tag in enumerate(tags):
        submitted[tag] = provider.create_batch(payload(simple_requests(2)), tag, MODEL)
        # Batches that are not batchline's, or whose tag does not parse, sit in between.
        file_id = submitted[tag].native["input_file_id"]
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
        client.batches.create(
            input_file_id=file_id,
            endpoint=CHAT,
            completion_window="24h",
            metadata={"batchline_job": "job-a", "batchline_chunk": f"one{n}"},
        )
    oldest = submitted[tags[0]]
    assert oldest.created_at is not None

    for tag, batch in submitted.items():
        found = find(provider, tag, created_after=oldest.created_at)
        assert found is not None and found.batch_id == batch.batch_id and found.tag == tag
    assert find(provider, BatchTag("job-a", 2), created_after=0) is None
    assert find(provider, BatchTag("job-c", 0), created_after=0) is None
    newest = max(b.created_at or 0 for b in submitted.values())
    assert find(provider, tags[0], created_after=newest + 1) is None


def test_find_batches_beyond_the_first_page(provider: OpenAIProvider, openai_emulator: Any) -> None:
    target = BatchTag("job-old", 7)
    first = provider.create_batch(payload(simple_requests(1)), target, MODEL)
    client = openai_emulator.client()
    file_id = first.native["input_file_id"]
    for n in range(105):
        client.batches.create(
            input_file_id=file_id,
            endpoint=CHAT,
            completion_window="24h",
            metadata={"batchline_job": "job-new", "batchline_chunk": str(n)},
        )
    assert first.batch_id not in {b.id for b in client.batches.list(limit=100).data}
    found = find(provider, target, created_after=(first.created_at or 0) - 60)
    assert found is not None and found.batch_id == first.batch_id
    found = find(provider, BatchTag("job-new", 3), created_after=0)
    assert found is not None and found.tag == BatchTag("job-new", 3)


def test_find_batches_created_in_the_same_second() -> None:
    clock = ManualClock(1_800_000_000.25)
    root, stop = start_in_thread(make_app(EmulatorConfig(), clock=clock))
    try:
        provider = OpenAIProvider("sk-emulator", base_url=f"{root}/v1", max_retries=0)
        started = clock.now
        clock.now += 0.5  # the batch is created half a second after `started`
        batch = provider.create_batch(payload(simple_requests(1)), BatchTag("job-s", 0), MODEL)
        assert batch.created_at == 1_800_000_000  # whole seconds, as at OpenAI
        found = find(provider, BatchTag("job-s", 0), created_after=started)
        assert found is not None and found.batch_id == batch.batch_id
    finally:
        stop()


# --------------------------------------------------------------------------- expiry, cancel


def test_expired_batch_keeps_finished_lines(provider: OpenAIProvider, openai_emulator: Any) -> None:
    openai_emulator.admin({"lines_per_second": 10.0, "expire_after_seconds": 0.5})
    requests = simple_requests(10)
    batch = wait_ended(
        provider, provider.create_batch(payload(requests), BatchTag("job-x", 0), MODEL).batch_id
    )
    assert batch.state is BatchState.EXPIRED
    results = list(provider.iter_results(batch))
    assert Counter(r.request_id for r in results) == Counter(f"bl-{i}" for i in range(1, 11))
    done = [r for r in results if r.status is ResultStatus.SUCCEEDED]
    expired = [r for r in results if r.status is ResultStatus.EXPIRED]
    assert len(done) + len(expired) == 10
    assert 0 < len(done) < 10
    assert batch.counts == {"total": 10, "completed": len(done), "failed": len(expired)}
    for result in expired:
        assert result.error is not None
        assert (result.error["type"], result.error["retryable"]) == ("batch_expired", True)
        assert result.text is None and result.response is None


def test_a_batch_expired_half_done_keeps_what_ran(
    provider: OpenAIProvider, openai_emulator: Any
) -> None:
    # The next batch expires right after its fourth line: no clock to race.
    openai_emulator.admin({"expire_after_lines": 4, "expire_next_batches": 1})
    requests = simple_requests(10)
    expiring = provider.create_batch(payload(requests), BatchTag("job-x", 0), MODEL)
    normal = provider.create_batch(payload(requests), BatchTag("job-x", 1), MODEL)
    batch = wait_ended(provider, expiring.batch_id)
    assert batch.state is BatchState.EXPIRED
    assert batch.counts == {"total": 10, "completed": 4, "failed": 6}
    results = list(provider.iter_results(batch))
    assert Counter(r.request_id for r in results) == Counter(f"bl-{i}" for i in range(1, 11))
    done = [r for r in results if r.status is ResultStatus.SUCCEEDED]
    expired = [r for r in results if r.status is ResultStatus.EXPIRED]
    assert (len(done), len(expired)) == (4, 6)
    assert all(r.text and r.text.startswith(CONTENT_PREFIX) for r in done)
    for result in expired:
        assert result.error is not None and result.error["retryable"] is True
    assert wait_ended(provider, normal.batch_id).state is BatchState.COMPLETED


def test_a_batch_expired_on_demand_keeps_what_ran(
    provider: OpenAIProvider, openai_emulator: Any
) -> None:
    openai_emulator.admin({"hold_after_lines": 3})
    made = provider.create_batch(payload(simple_requests(8)), BatchTag("job-x", 0), MODEL)
    openai_emulator.wait_held(made.batch_id)
    assert openai_emulator.expire(made.batch_id) == [made.batch_id]
    batch = provider.get_batch(made.batch_id)
    assert batch.state is BatchState.EXPIRED
    assert batch.counts == {"total": 8, "completed": 3, "failed": 5}
    statuses = Counter(r.status for r in provider.iter_results(batch))
    assert statuses == {ResultStatus.SUCCEEDED: 3, ResultStatus.EXPIRED: 5}


def test_a_batch_failed_at_validation_says_why(
    provider: OpenAIProvider, openai_emulator: Any
) -> None:
    openai_emulator.admin({"batch_fail_next": 1})
    made = provider.create_batch(payload(simple_requests(3)), BatchTag("job-f", 0), MODEL)
    batch = wait_ended(provider, made.batch_id)
    assert batch.state is BatchState.FAILED
    [error] = batch.errors
    assert error.startswith("invalid_request: Cannot find file ")
    assert batch.native["input_file_id"] in error
    assert list(provider.iter_results(batch)) == []
    again = provider.create_batch(payload(simple_requests(3)), BatchTag("job-f", 1), MODEL)
    assert wait_ended(provider, again.batch_id).state is BatchState.COMPLETED


def test_cancel_keeps_lines_finished_before(provider: OpenAIProvider, openai_emulator: Any) -> None:
    # 6 lines run, then the batch is held until the cancel, however slow this machine.
    openai_emulator.admin({"hold_after_lines": 6, "cancel_seconds": 0.05})
    batch = provider.create_batch(payload(simple_requests(40)), BatchTag("job-k", 0), MODEL)
    openai_emulator.wait_held(batch.batch_id)
    running = provider.get_batch(batch.batch_id)
    assert running.state is BatchState.RUNNING and running.counts["completed"] == 6
    provider.cancel(batch.batch_id)
    assert provider.get_batch(batch.batch_id).state in (BatchState.CANCELING, BatchState.CANCELED)
    ended = wait_ended(provider, batch.batch_id)
    assert ended.state is BatchState.CANCELED
    results = list(provider.iter_results(ended))
    assert len(results) == 6
    assert all(r.status is ResultStatus.SUCCEEDED for r in results)
    assert len(results) == ended.counts["completed"]
    assert ended.counts["total"] == 40


def test_cancel_of_an_ended_batch_is_not_retryable(
    provider: OpenAIProvider, openai_emulator: Any
) -> None:
    batch = wait_ended(
        provider,
        provider.create_batch(payload(simple_requests(1)), BatchTag("j", 0), MODEL).batch_id,
    )
    assert batch.state is BatchState.COMPLETED
    try:
        provider.cancel(batch.batch_id)  # a no-op would do too: the batch is not running
    except ProviderError as exc:
        assert exc.status == 409
        assert exc.retryable is False
    assert provider.get_batch(batch.batch_id).state is BatchState.COMPLETED


# --------------------------------------------------------------------------- HTTP errors


def test_transient_5xx_are_retried_by_the_sdk(
    provider: OpenAIProvider, openai_emulator: Any
) -> None:
    openai_emulator.admin({"api_error_next": 2, "api_error_status": 500})
    before = openai_emulator.stats()
    batch = provider.create_batch(payload(simple_requests(2)), BatchTag("job-r", 0), MODEL)
    after = openai_emulator.stats()
    assert after["injected_errors"] - before["injected_errors"] == 2
    assert after["api_requests"] - before["api_requests"] == 4  # 2 failed + file + batch
    assert [b["id"] for b in openai_emulator.batches()] == [batch.batch_id]
    assert provider.get_batch(batch.batch_id).tag == BatchTag("job-r", 0)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_persistent_server_errors_are_retryable(openai_emulator: Any, status: int) -> None:
    provider = OpenAIProvider("sk-emulator", base_url=openai_emulator.base_url, max_retries=0)
    openai_emulator.admin({"api_error_rate": 1.0, "api_error_status": status})
    calls = [
        lambda: provider.create_batch(payload(simple_requests(1)), BatchTag("j", 0), MODEL),
        lambda: provider.get_batch("batch_x"),
        lambda: provider.find_batches(BatchTag("j", 0), 0, 0, 1),
        lambda: provider.cancel("batch_x"),
    ]
    for call in calls:
        with pytest.raises(ProviderError) as info:
            call()
        assert (info.value.retryable, info.value.status) == (True, status)
    assert openai_emulator.batches() == []


def test_client_errors_are_permanent(provider: OpenAIProvider, openai_emulator: Any) -> None:
    with pytest.raises(ProviderError) as info:
        provider.get_batch("batch_does_not_exist")
    assert (info.value.retryable, info.value.status) == (False, 404)

    # The emulator takes any key: a rejected key is injected as the 401 OpenAI sends.
    openai_emulator.admin({"api_error_next": 1, "api_error_status": 401})
    with pytest.raises(ProviderError) as info:
        provider.create_batch(payload(simple_requests(1)), BatchTag("j", 0), MODEL)
    assert (info.value.retryable, info.value.status) == (False, 401)
    assert openai_emulator.batches() == []

    with pytest.raises(ProviderError) as info:
        OpenAIProvider(None, base_url=openai_emulator.base_url).get_batch("batch_x")
    assert info.value.retryable is False
    assert "OPENAI_API_KEY" in str(info.value)


def test_unreachable_api_is_retryable() -> None:
    port = free_port("127.0.0.1")  # nothing listens there
    provider = OpenAIProvider("sk-x", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(ProviderError) as info:
        provider.get_batch("batch_x")
    assert info.value.retryable is True and info.value.status is None


# --------------------------------------------------------------------------- spec


SPEC_URI = "urn:openai:openapi"


@cache
def _request_validator() -> OAS31Validator:
    """CreateChatCompletionRequest, closed: a key the spec does not know is an error.

    `unevaluatedProperties` sits at the top, where it sees every property the `allOf`
    branches evaluate (the response validator in test_openai_emulator.py closes each
    schema node, which rejects the request schema's allOf-split properties).
    """
    with SPEC_PATH.open() as fh:
        spec = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert spec["openapi"].startswith("3.1")
    registry = Registry().with_resource(
        SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT202012)
    )
    schema = {
        "$ref": f"{SPEC_URI}#/components/schemas/CreateChatCompletionRequest",
        "unevaluatedProperties": False,
    }
    return OAS31Validator(schema, registry=registry)


def spec_errors(body: Any) -> list[str]:
    errors = sorted(_request_validator().iter_errors(body), key=lambda e: list(e.path))
    return [f"{list(e.path)}: {e.message[:200]}" for e in errors]


ENCODED_LINES: dict[str, dict[str, Any]] = {
    "minimal": batchline_line("hello"),
    "system": batchline_line("hello", system="You are terse."),
    "max_tokens": batchline_line("hello", max_tokens=64),
    "temperature": batchline_line("hello", temperature=0.7),
    "temperature-int-bounds": batchline_line("hello", temperature=2, max_tokens=1),
    "stop": batchline_line("hello", stop=["\n", "END", "###", "Q:"]),
    "everything": batchline_line(
        "hello",
        custom_id="c-1",
        system="sys",
        max_tokens=5,
        temperature=0,
        stop=["x"],
        metadata={"team": "a"},
    ),
    "conversation": {
        "model": f"openai/{MODEL}",
        "messages": [
            {"role": "developer", "content": "be nice"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
        ],
        "system": "sys",
    },
    "native": native_line("hi"),
    "native-extras": native_line(
        "hi",
        max_completion_tokens=10,
        n=2,
        seed=3,
        top_p=0.5,
        logprobs=True,
        top_logprobs=2,
        response_format={"type": "json_object"},
        metadata={"k": "v"},
        store=False,
    ),
    "native-deprecated-max_tokens": native_line("hi", max_tokens=10),
    "native-default-model": {
        "method": "POST",
        "url": CHAT,
        "body": {"messages": user("hi")},
    },
}


@pytest.mark.parametrize("obj", ENCODED_LINES.values(), ids=ENCODED_LINES.keys())
def test_encoded_bodies_match_the_spec(obj: dict[str, Any]) -> None:
    request = parse(12, obj, default_model=f"openai/{MODEL}")
    line = orjson.loads(encode(request))
    assert set(line) == {"custom_id", "method", "url", "body"}
    assert (line["custom_id"], line["method"], line["url"]) == ("bl-12", "POST", CHAT)
    body = line["body"]
    assert spec_errors(body) == []
    assert body["model"] == MODEL
    params = request.params or {}
    if "system" in params:
        assert body["messages"][0] == {"role": "system", "content": params["system"]}
    if "max_tokens" in params:
        assert body["max_completion_tokens"] == params["max_tokens"]
        assert "max_tokens" not in body
    if request.native is not None:
        assert body == request.native  # passed through untouched


MUTATIONS: dict[str, Any] = {
    "messages-a-string": lambda b: {**b, "messages": "hello"},
    "messages-empty": lambda b: {**b, "messages": []},
    "no-model": lambda b: {k: v for k, v in b.items() if k != "model"},
    "unknown-role": lambda b: {**b, "messages": [{"role": "wizard", "content": "x"}]},
    "temperature-too-high": lambda b: {**b, "temperature": 2.5},
    "max_completion_tokens-a-string": lambda b: {**b, "max_completion_tokens": "5"},
    "misspelt-key": lambda b: {**b, "max_completion_token": 5},
    "five-stops": lambda b: {**b, "stop": ["a", "b", "c", "d", "e"]},
}


@pytest.mark.parametrize("mutate", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_the_spec_validator_rejects_mutated_bodies(mutate: Any) -> None:
    body = orjson.loads(encode(parse(1, ENCODED_LINES["everything"])))["body"]
    assert spec_errors(body) == []
    assert spec_errors(mutate(body)) != []


PARSER_GAPS: dict[str, dict[str, Any]] = {
    "stop-empty": batchline_line("hi", stop=[]),
    "stop-five": batchline_line("hi", stop=["a", "b", "c", "d", "e"]),
    "tool-message-without-tool_call_id": {
        "model": f"openai/{MODEL}",
        "messages": [*user("hi"), {"role": "tool", "content": "42"}],
    },
    "content-empty-list": {
        "model": f"openai/{MODEL}",
        "messages": [{"role": "user", "content": []}],
    },
}


@pytest.mark.parametrize("obj", PARSER_GAPS.values(), ids=PARSER_GAPS.keys())
def test_lines_the_spec_rejects_are_invalid(obj: dict[str, Any]) -> None:
    parsed = parse_line(1, orjson.dumps(obj), default_model=None, max_line_bytes=10**6)
    if isinstance(parsed, Request):
        assert spec_errors(orjson.loads(encode(parsed))["body"]) == []
    else:
        assert isinstance(parsed, InvalidLine)
