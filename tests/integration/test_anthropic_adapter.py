"""AnthropicProvider against the Anthropic emulator, and every request it sends against the
SDK's own request types (`batch_create_params.Request` / `MessageCreateParamsNonStreaming`).

What every provider must do alike is in test_provider_conformance.py; this module covers
what is Anthropic's own: the JSON body made from the staged payload, finding batches
without metadata, the streamed results, and the error mapping.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
import pytest

from batchline.adapters.providers import anthropic as adapter_module
from batchline.adapters.providers.anthropic import AnthropicProvider
from batchline.domain.models import BatchState, BatchTag, ProviderBatch, ResultStatus
from batchline.domain.providers.anthropic import encode
from batchline.domain.requests import InvalidLine, Request, parse_line
from batchline.errors import ProviderError
from batchline.ports import StagedPayload
from batchline_emulators._wsgi import start_in_thread
from batchline_emulators.anthropic import EmulatorConfig, make_app
from batchline_tools.local.processes import free_port

from .anthropic_types import params_problems
from .conftest import WAIT_SECONDS, AnthropicEmulatorHandle, _http_json

pytestmark = pytest.mark.integration

MODEL = "claude-haiku-4-5"
DEFAULT_MAX_TOKENS = 1024


# --------------------------------------------------------------------------- helpers


def parse(line: int, obj: dict[str, Any], default_model: str | None = None) -> Request:
    parsed = parse_line(line, orjson.dumps(obj), default_model=default_model, max_line_bytes=10**6)
    assert isinstance(parsed, Request), parsed
    return parsed


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def batchline_line(text: str, **fields: Any) -> dict[str, Any]:
    return {"model": f"anthropic/{MODEL}", "messages": user(text), **fields}


def native_line(text: str, **params: Any) -> dict[str, Any]:
    return {
        "custom_id": "n/" + text[:20],
        "params": {"model": MODEL, "messages": user(text), **params},
    }


def payload(requests: Iterable[Request]) -> StagedPayload:
    return StagedPayload.of_bytes(b"".join(encode(r, DEFAULT_MAX_TOKENS) for r in requests))


def simple_requests(n: int, first_line: int = 1) -> list[Request]:
    return [parse(first_line + i, batchline_line(f"question {i}")) for i in range(n)]


def wait_ended(
    provider: AnthropicProvider, batch_id: str, timeout: float = WAIT_SECONDS
) -> ProviderBatch:
    deadline = time.monotonic() + timeout
    while True:
        batch = provider.get_batch(batch_id)
        if batch.state.ended:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.state}"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _clean(anthropic_emulator: AnthropicEmulatorHandle) -> Iterator[None]:
    anthropic_emulator.reset()
    yield
    anthropic_emulator.reset()


@pytest.fixture
def provider(anthropic_emulator: AnthropicEmulatorHandle) -> AnthropicProvider:
    return AnthropicProvider("sk-ant-emulator", base_url=anthropic_emulator.base_url)


class Recorder:
    """WSGI middleware that notes the framing of every create request it passes on."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.creates: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/v1/messages/batches":
            self.creates.append(
                {
                    "content_length": environ.get("CONTENT_LENGTH"),
                    "transfer_encoding": environ.get("HTTP_TRANSFER_ENCODING"),
                    "content_type": environ.get("CONTENT_TYPE"),
                }
            )
        return self.app(environ, start_response)


# --------------------------------------------------------------------------- submit


def test_submit_sends_the_payload_as_one_body_with_its_length() -> None:
    emulator = make_app(EmulatorConfig(api_error_next=2, api_error_status=529))
    recorder = Recorder(emulator)
    root, stop = start_in_thread(recorder)
    try:
        provider = AnthropicProvider("k", base_url=root)
        requests = simple_requests(50)
        data = b"".join(encode(r, DEFAULT_MAX_TOKENS) for r in requests)
        started = time.time()
        batch = provider.create_batch(StagedPayload.of_bytes(data), BatchTag("job-x", 3), MODEL)
        # Two overloaded answers (no batch made), then the third attempt sent the same body.
        assert len(recorder.creates) == 3 and emulator.state.creates == 1
        for create in recorder.creates:
            assert create["transfer_encoding"] is None  # not chunked
            assert int(create["content_length"]) == len(data) + 14
            assert create["content_type"] == "application/json"
        assert batch.batch_id.startswith("msgbatch_") and batch.tag is None
        assert batch.state is BatchState.RUNNING
        assert batch.counts == {"total": 50, "completed": 0, "failed": 0}
        assert batch.created_at is not None and abs(batch.created_at - started) < 5
        [record] = emulator.state.batches.values()
        received = sorted(
            ({"custom_id": p.custom_id, "params": p.params} for p in record.requests),
            key=lambda r: int(str(r["custom_id"])[3:]),
        )
        assert received == [orjson.loads(line) for line in data.splitlines()]
    finally:
        stop()


def test_a_body_over_the_limit_is_refused_for_good(
    provider: AnthropicProvider, anthropic_emulator: AnthropicEmulatorHandle
) -> None:
    anthropic_emulator.admin({"max_bytes": 2000})
    with pytest.raises(ProviderError) as info:
        provider.create_batch(payload(simple_requests(40)), BatchTag("j", 0), MODEL)
    assert (info.value.status, info.value.retryable) == (413, False)
    assert anthropic_emulator.stats()["creates"] == 0


# --------------------------------------------------------------------------- SDK request types


ENCODED_LINES: dict[str, dict[str, Any]] = {
    "minimal": batchline_line("hello"),
    "system": batchline_line("hello", system="You are terse."),
    "max_tokens": batchline_line("hello", max_tokens=64),
    "stop": batchline_line("hello", stop=["\n\n", "END"]),
    "metadata-dropped": batchline_line("hello", metadata={"team": "a", "n": 1}),
    "everything": batchline_line(
        "hello", custom_id="a/b ü", system="s", max_tokens=5, stop=["x"], metadata={"k": "v"}
    ),
    "conversation": {
        "model": f"anthropic/{MODEL}",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "system", "content": "answer in French"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "and this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw=="},
                    },
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                    },
                ],
            },
        ],
    },
    "default-model": {"messages": user("hi")},
    "native": native_line("hi", max_tokens=10),
    "native-without-max_tokens": native_line("hi"),
    "native-extras": native_line(
        "hi",
        max_tokens=2000,
        system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        tools=[
            {
                "name": "answer",
                "description": "structured answer",
                "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}},
            }
        ],
        tool_choice={"type": "auto"},
        service_tier="auto",
    ),
    "native-default-model": {"params": {"messages": user("hi"), "max_tokens": 3}},
}


def test_every_request_sent_is_an_sdk_batch_request(
    provider: AnthropicProvider, anthropic_emulator: AnthropicEmulatorHandle
) -> None:
    requests = [
        parse(n, obj, default_model=f"anthropic/{MODEL}")
        for n, obj in enumerate(ENCODED_LINES.values(), start=1)
    ]
    batch = provider.create_batch(payload(requests), BatchTag("job-types", 0), MODEL)
    received = anthropic_emulator.requests(batch.batch_id)  # as they arrived over HTTP
    assert len(received) == len(ENCODED_LINES)
    problems = {r["custom_id"]: params_problems(r) for r in received}
    assert {k: v for k, v in problems.items() if v} == {}
    by_line = {int(r["custom_id"][3:]): r["params"] for r in received}
    for n, (name, obj) in enumerate(ENCODED_LINES.items(), start=1):
        params = by_line[n]
        assert params["model"] == MODEL, name
        if "params" in obj:
            assert {k: v for k, v in params.items() if k not in ("model", "max_tokens")} == {
                k: v for k, v in obj["params"].items() if k not in ("model", "max_tokens")
            }
            assert params["max_tokens"] == obj["params"].get("max_tokens", DEFAULT_MAX_TOKENS)
        else:
            assert params["max_tokens"] == obj.get("max_tokens", DEFAULT_MAX_TOKENS)
            assert params["messages"] == obj["messages"]
            assert params.get("system") == obj.get("system")
            assert params.get("stop_sequences") == obj.get("stop")
            assert "metadata" not in params and "temperature" not in params
    # The emulator, which checks params as Anthropic does, agrees.
    ended = wait_ended(provider, batch.batch_id)
    assert ended.counts == {
        "total": len(ENCODED_LINES),
        "completed": len(ENCODED_LINES),
        "failed": 0,
    }


MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "temperature": lambda p: p.update(temperature=0.5),
    "developer-role": lambda p: p["messages"][0].update(role="developer"),
    "openai-tool-calls": lambda p: p["messages"][0].update(tool_calls=[]),
    "max_tokens-a-string": lambda p: p.update(max_tokens="5"),
    "no-max_tokens": lambda p: p.pop("max_tokens"),
    "stop-not-a-list": lambda p: p.update(stop_sequences="END"),
    "openai-image-part": lambda p: p["messages"][0].update(
        content=[{"type": "image_url", "image_url": {"url": "https://x"}}]
    ),
    "metadata-team": lambda p: p.update(metadata={"team": "a"}),
    "misspelt-key": lambda p: p.update(max_token=5),
}


@pytest.mark.parametrize("mutate", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_the_sdk_type_check_rejects_mutated_requests(
    mutate: Callable[[dict[str, Any]], None],
) -> None:
    line = orjson.loads(encode(parse(1, ENCODED_LINES["everything"]), DEFAULT_MAX_TOKENS))
    assert params_problems(line) == []
    mutate(line["params"])
    assert params_problems(line) != []


PARSER_GUARDS: dict[str, dict[str, Any]] = {
    "temperature": batchline_line("hi", temperature=0.2),
    "developer-role": {
        "model": f"anthropic/{MODEL}",
        "messages": [{"role": "developer", "content": "x"}],
    },
    "tool-role": {
        "model": f"anthropic/{MODEL}",
        "messages": [{"role": "tool", "content": "42", "tool_call_id": "c"}],
    },
    "openai-tool-calls": {
        "model": f"anthropic/{MODEL}",
        "messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}],
    },
    "message-name": {
        "model": f"anthropic/{MODEL}",
        "messages": [{"role": "user", "content": "x", "name": "bob"}],
    },
    "string-part": {
        "model": f"anthropic/{MODEL}",
        "messages": [{"role": "user", "content": ["x"]}],
    },
    "empty-content": {"model": f"anthropic/{MODEL}", "messages": [{"role": "user", "content": []}]},
}


@pytest.mark.parametrize("obj", PARSER_GUARDS.values(), ids=PARSER_GUARDS.keys())
def test_batchline_lines_the_sdk_types_reject_are_invalid(obj: dict[str, Any]) -> None:
    """What would not be an SDK request is refused at parse time, naming the field."""
    parsed = parse_line(1, orjson.dumps(obj), default_model=None, max_line_bytes=10**6)
    assert isinstance(parsed, InvalidLine), parsed
    assert parsed.field.startswith(("messages[0]", "temperature"))


# --------------------------------------------------------------------------- find_batches


def test_find_batches_by_window_and_count(
    provider: AnthropicProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter_module, "LIST_PAGE", 2)  # make the listing page on
    before = time.time() - 1
    sizes = [3, 5, 3, 3, 4, 3, 5]
    made = [
        provider.create_batch(payload(simple_requests(n)), BatchTag("j", i), MODEL)
        for i, n in enumerate(sizes)
    ]
    after = time.time() + 1
    threes = [b.batch_id for b, n in zip(made, sizes, strict=True) if n == 3][::-1]
    found = provider.find_batches(BatchTag("any", 0), before, after, 3)
    assert [b.batch_id for b in found] == threes  # newest first, across pages
    assert all(b.tag is None and b.counts["total"] == 3 for b in found)
    assert provider.find_batches(BatchTag("any", 0), before, after, 7) == []
    assert provider.find_batches(BatchTag("any", 0), after, after + 10, 3) == []
    created = [b.created_at or 0 for b in made]
    middle = provider.find_batches(BatchTag("any", 0), created[2], created[4], 3)
    assert [b.batch_id for b in middle] == [made[3].batch_id, made[2].batch_id]


# --------------------------------------------------------------------------- results


def test_iter_results_reads_a_stream_in_many_parts(
    provider: AnthropicProvider, anthropic_emulator: AnthropicEmulatorHandle
) -> None:
    anthropic_emulator.admin({"results_part_bytes": 97})  # lines split across reads
    requests = [parse(i, batchline_line(f"question {i} " + "ü" * (i % 40))) for i in range(1, 301)]
    batch = wait_ended(
        provider, provider.create_batch(payload(requests), BatchTag("job-big", 0), MODEL).batch_id
    )
    results = list(provider.iter_results(batch))
    assert Counter(r.request_id for r in results) == Counter(f"bl-{i}" for i in range(1, 301))
    assert all(r.status is ResultStatus.SUCCEEDED and r.text for r in results)
    assert all(r.response["type"] == "message" for r in results)


def test_a_batch_expired_half_done_keeps_what_ran(
    provider: AnthropicProvider, anthropic_emulator: AnthropicEmulatorHandle
) -> None:
    # 4 requests run, then the batch waits until the test expires it: no clock to race.
    anthropic_emulator.admin({"hold_after_lines": 4})
    requests = simple_requests(10)
    made = provider.create_batch(payload(requests), BatchTag("job-exp", 0), MODEL)
    anthropic_emulator.wait_held(made.batch_id)
    assert anthropic_emulator.expire(made.batch_id) == [made.batch_id]
    batch = provider.get_batch(made.batch_id)
    assert batch.state is BatchState.EXPIRED
    assert batch.counts == {"total": 10, "completed": 4, "failed": 6}
    results = list(provider.iter_results(batch))
    assert Counter(r.request_id for r in results) == Counter(f"bl-{i}" for i in range(1, 11))
    done = [r for r in results if r.status is ResultStatus.SUCCEEDED]
    expired = [r for r in results if r.status is ResultStatus.EXPIRED]
    assert (len(done), len(expired)) == (4, 6)
    assert all(r.text for r in done)
    for result in expired:
        assert result.error is not None and result.error["retryable"] is True
        assert result.text is None


def test_errored_rate_gives_retryable_line_errors(
    provider: AnthropicProvider, anthropic_emulator: AnthropicEmulatorHandle
) -> None:
    anthropic_emulator.admin({"errored_rate": 0.5})
    requests = simple_requests(20)
    made = provider.create_batch(payload(requests), BatchTag("job-err", 0), MODEL)
    batch = wait_ended(provider, made.batch_id)
    assert batch.state is BatchState.COMPLETED
    results = list(provider.iter_results(batch))
    failed = [r for r in results if r.status is ResultStatus.FAILED]
    assert 0 < len(failed) < 20 and len(results) == 20
    assert batch.counts == {"total": 20, "completed": 20 - len(failed), "failed": len(failed)}
    for result in failed:
        assert result.error is not None
        assert (result.error["type"], result.error["retryable"]) == ("api_error", True)
        assert result.text is None


# --------------------------------------------------------------------------- cancel


def test_cancel_of_an_ended_batch_is_a_no_op(provider: AnthropicProvider) -> None:
    batch = wait_ended(
        provider,
        provider.create_batch(payload(simple_requests(1)), BatchTag("j", 0), MODEL).batch_id,
    )
    provider.cancel(batch.batch_id)
    assert provider.get_batch(batch.batch_id).state is BatchState.COMPLETED


@pytest.mark.parametrize("status", [500, 503])
def test_a_create_answered_with_an_error_that_may_have_made_a_batch_is_not_sent_again(
    status: int,
) -> None:
    """A 500 may come after the batch was made: a second create could make a second one,
    so the error goes to the caller (the create lock's holder settles it)."""
    emulator = make_app(EmulatorConfig(api_error_next=1, api_error_status=status))
    recorder = Recorder(emulator)
    root, stop = start_in_thread(recorder)
    try:
        provider = AnthropicProvider("k", base_url=root)
        data = b"".join(encode(r, DEFAULT_MAX_TOKENS) for r in simple_requests(2))
        with pytest.raises(ProviderError) as info:
            provider.create_batch(StagedPayload.of_bytes(data), BatchTag("job-x", 0), MODEL)
        assert (info.value.retryable, info.value.status) == (True, status)
        assert len(recorder.creates) == 1
    finally:
        stop()


def test_latest_batch_is_the_newest_one_listed(
    provider: AnthropicProvider, anthropic_emulator: AnthropicEmulatorHandle
) -> None:
    assert provider.latest_batch() is None  # none yet (the emulator was reset)
    made = [
        provider.create_batch(payload(simple_requests(n)), BatchTag("j", n), MODEL) for n in (1, 2)
    ]
    newest = provider.latest_batch()
    assert newest is not None and newest.batch_id == made[-1].batch_id
    assert newest.created_at is not None and made[0].created_at is not None
    assert newest.created_at >= made[0].created_at


# --------------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize("status", [429, 500, 529])
def test_persistent_server_errors_are_retryable(
    anthropic_emulator: AnthropicEmulatorHandle, status: int
) -> None:
    provider = AnthropicProvider("k", base_url=anthropic_emulator.base_url, max_retries=0)
    anthropic_emulator.admin({"api_error_rate": 1.0, "api_error_status": status})
    calls = [
        lambda: provider.create_batch(payload(simple_requests(1)), BatchTag("j", 0), MODEL),
        lambda: provider.get_batch("msgbatch_x"),
        lambda: provider.find_batches(BatchTag("j", 0), 0, 1e12, 1),
        lambda: provider.cancel("msgbatch_x"),
    ]
    for call in calls:
        with pytest.raises(ProviderError) as info:
            call()
        assert (info.value.retryable, info.value.status) == (True, status)
    assert anthropic_emulator.stats()["creates"] == 0


def test_a_create_past_the_queue_limit_is_raised_at_once_with_its_retry_after(
    provider: AnthropicProvider, anthropic_emulator: AnthropicEmulatorHandle
) -> None:
    """Not retried here: the caller holds the deployment's create lock, and the queue frees
    in minutes, not seconds; the chunk waits for room outside it, as long as Anthropic
    said (`retry-after`)."""
    anthropic_emulator.admin({"quota_exceeded_next": 1})  # refused however much room
    with pytest.raises(ProviderError) as info:
        provider.create_batch(payload(simple_requests(1)), BatchTag("j", 0), MODEL)
    assert (info.value.retryable, info.value.status, info.value.retry_after) == (True, 429, 1.0)
    assert "HTTP 429" in str(info.value) and "processing queue" in str(info.value)
    quota = _http_json("GET", f"{anthropic_emulator.root_url}/_emulator/quota")
    assert quota["over_quota"] == 1 and anthropic_emulator.stats()["creates"] == 0
    provider.create_batch(payload(simple_requests(1)), BatchTag("j", 0), MODEL)  # room now


def test_client_errors_are_permanent(
    provider: AnthropicProvider, anthropic_emulator: AnthropicEmulatorHandle
) -> None:
    with pytest.raises(ProviderError) as info:
        provider.get_batch("msgbatch_does_not_exist")
    assert (info.value.retryable, info.value.status) == (False, 404)
    anthropic_emulator.admin({"api_error_next": 1, "api_error_status": 401})
    with pytest.raises(ProviderError) as info:
        provider.create_batch(payload(simple_requests(1)), BatchTag("j", 0), MODEL)
    assert (info.value.retryable, info.value.status) == (False, 401)
    with pytest.raises(ProviderError) as info:
        AnthropicProvider(None, base_url=anthropic_emulator.base_url).get_batch("msgbatch_x")
    assert info.value.retryable is False and "ANTHROPIC_API_KEY" in str(info.value)


def test_unreachable_api_is_retryable() -> None:
    port = free_port("127.0.0.1")  # nothing listens there
    provider = AnthropicProvider("k", base_url=f"http://127.0.0.1:{port}", max_retries=0)
    with pytest.raises(ProviderError) as info:
        provider.get_batch("msgbatch_x")
    assert info.value.retryable is True and info.value.status is None
