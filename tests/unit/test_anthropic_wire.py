"""The Anthropic wire format: encoding, the request body, states, counts and results."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batchline.domain.models import BatchState, ResultStatus
from batchline.domain.providers import anthropic as wire
from batchline.domain.requests import Request, parse_line

MSG = [{"role": "user", "content": "hi"}]


def parse(obj: dict[str, Any], default_model: str | None = None) -> Request:
    got = parse_line(3, orjson.dumps(obj), default_model=default_model, max_line_bytes=10**6)
    assert isinstance(got, Request), got
    return got


def encoded(obj: dict[str, Any], default_max_tokens: int = 1024) -> dict[str, Any]:
    line = wire.encode(parse(obj), default_max_tokens)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    result: dict[str, Any] = orjson.loads(line)
    return result


def test_batchline_line_maps_to_message_params() -> None:
    got = encoded(
        {
            "custom_id": "anything / ü",
            "model": "anthropic/claude-haiku-4-5",
            "system": "be brief",
            "messages": MSG,
            "max_tokens": 50,
            "stop": ["END"],
            "metadata": {"team": "a"},
        }
    )
    assert got == {
        "custom_id": "bl-3",
        "params": {
            "model": "claude-haiku-4-5",
            "max_tokens": 50,
            "messages": MSG,
            "system": "be brief",
            "stop_sequences": ["END"],
        },
    }


def test_max_tokens_defaults_to_the_deployment_setting() -> None:
    got = encoded({"model": "anthropic/claude-haiku-4-5", "messages": MSG}, 77)
    assert got["params"] == {"model": "claude-haiku-4-5", "max_tokens": 77, "messages": MSG}


def test_native_params_pass_untouched_but_get_max_tokens() -> None:
    params = {"model": "claude-sonnet-4-5", "messages": MSG, "top_k": 5, "metadata": {"x": 1}}
    got = encoded({"custom_id": "n", "params": params}, 300)
    assert got == {"custom_id": "bl-3", "params": {**params, "max_tokens": 300}}
    given = {**params, "max_tokens": 9}
    assert encoded({"custom_id": "n", "params": given})["params"] == given


def test_make_encoder_binds_the_default() -> None:
    request = parse({"model": "anthropic/claude-haiku-4-5", "messages": MSG})
    assert wire.make_encoder(12)(request) == wire.encode(request, 12)


@pytest.mark.parametrize("part_size", [1, 7, 64, 10**6])
def test_request_body_is_the_payload_as_one_json_array(part_size: int) -> None:
    lines = [
        wire.encode(
            parse({"model": "anthropic/m", "messages": [{"role": "user", "content": t}]}), 5
        )
        for t in ("a", "b\nc", "ü" * 40, "[emulator:fail=500]")
    ]
    payload = b"".join(lines)
    body = b"".join(wire.request_body(payload, part_size))
    assert len(body) == wire.request_body_size(len(payload))
    assert orjson.loads(body) == {"requests": [orjson.loads(x) for x in lines]}
    one = b"".join(wire.request_body(lines[0]))
    assert orjson.loads(one) == {"requests": [orjson.loads(lines[0])]}
    assert b"".join(wire.request_body(bytearray(payload), part_size)) == body
    with pytest.raises(ValueError):
        list(wire.request_body(payload[:-1]))


def counts(**values: int) -> dict[str, int]:
    base = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    return {**base, **values}


@pytest.mark.parametrize(
    ("native", "state", "normalised"),
    [
        (
            {"processing_status": "in_progress", "request_counts": counts(processing=5)},
            BatchState.RUNNING,
            {"total": 5, "completed": 0, "failed": 0},
        ),
        (
            {
                "processing_status": "canceling",
                "cancel_initiated_at": "2026-01-01T00:00:00Z",
                "request_counts": counts(processing=5),
            },
            BatchState.CANCELING,
            {"total": 5, "completed": 0, "failed": 0},
        ),
        (
            {"processing_status": "ended", "request_counts": counts(succeeded=4, errored=1)},
            BatchState.COMPLETED,
            {"total": 5, "completed": 4, "failed": 1},
        ),
        (
            {"processing_status": "ended", "request_counts": counts(succeeded=2, expired=3)},
            BatchState.EXPIRED,
            {"total": 5, "completed": 2, "failed": 3},
        ),
        (
            {
                "processing_status": "ended",
                "cancel_initiated_at": "2026-01-01T00:00:00.5Z",
                "request_counts": counts(succeeded=1, canceled=4),
            },
            BatchState.CANCELED,
            {"total": 5, "completed": 1, "failed": 4},
        ),
    ],
)
def test_state_and_counts(
    native: dict[str, Any], state: BatchState, normalised: dict[str, int]
) -> None:
    assert wire.batch_state(native) is state
    assert wire.batch_counts(native) == normalised
    assert wire.request_total(native) == 5


def test_timestamps_are_rfc3339() -> None:
    assert wire.timestamp("2026-06-01T00:00:01.250000Z") == 1780272001.25
    assert wire.timestamp("2026-06-01T02:00:01+02:00") == 1780272001.0
    assert wire.timestamp(None) is None


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [
        {"type": "text", "text": "Hello", "citations": None},
        {"type": "tool_use", "id": "t", "name": "f", "input": {}},
        {"type": "text", "text": ", world", "citations": None},
    ],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "output_tokens": 4,
        "cache_creation_input_tokens": 2,
        "cache_read_input_tokens": 3,
    },
}


def test_succeeded_result() -> None:
    got = wire.normalise({"custom_id": "bl-7", "result": {"type": "succeeded", "message": MESSAGE}})
    assert (got.request_id, got.status, got.text, got.finish_reason) == (
        "bl-7",
        ResultStatus.SUCCEEDED,
        "Hello, world",
        "end_turn",
    )
    assert got.usage == {
        "input_tokens": 15,
        "output_tokens": 4,
        "cached_input_tokens": 3,
        "cache_write_input_tokens": 2,
    }
    assert got.response is MESSAGE and got.error is None


def test_writes_to_the_1_hour_cache_are_counted_apart() -> None:
    by_ttl = {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2}
    one_hour = {**MESSAGE, "usage": {**MESSAGE["usage"], "cache_creation": by_ttl}}
    got = wire.normalise(
        {"custom_id": "bl-7", "result": {"type": "succeeded", "message": one_hour}}
    )
    assert got.usage is not None
    assert (got.usage["cache_write_input_tokens"], got.usage["cache_write_1h_input_tokens"]) == (
        2,
        2,
    )


def test_succeeded_without_text_has_no_text() -> None:
    message = {**MESSAGE, "content": [], "stop_reason": "max_tokens"}
    got = wire.normalise({"custom_id": "bl-1", "result": {"type": "succeeded", "message": message}})
    assert (got.text, got.finish_reason) == (None, "max_tokens")


@pytest.mark.parametrize(
    ("error_type", "retryable"),
    [("invalid_request_error", False), ("overloaded_error", True), ("api_error", True)],
)
def test_errored_result(error_type: str, retryable: bool) -> None:
    error = {
        "type": "error",
        "error": {"type": error_type, "message": "messages: field required"},
        "request_id": "req_1",
    }
    got = wire.normalise({"custom_id": "bl-2", "result": {"type": "errored", "error": error}})
    assert got.status is ResultStatus.FAILED
    assert got.error == {
        "type": error_type,
        "message": "messages: field required",
        "retryable": retryable,
    }
    assert got.response is error and got.text is None and got.usage is None


def test_canceled_and_expired_results() -> None:
    got = wire.normalise({"custom_id": "bl-4", "result": {"type": "canceled"}})
    assert got.status is ResultStatus.CANCELED and got.error is not None
    assert (got.error["type"], got.error["retryable"]) == ("batch_canceled", False)
    got = wire.normalise({"custom_id": "bl-5", "result": {"type": "expired"}})
    assert got.status is ResultStatus.EXPIRED and got.error is not None
    assert (got.error["type"], got.error["retryable"]) == ("batch_expired", True)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "4"}, 4.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # the finer one first
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),  # a date: not read
        ({"retry-after": "-1"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "1e9"}, None),
        ({}, None),
    ],
)
def test_a_retry_after_is_read_in_seconds_or_not_at_all(
    headers: dict[str, str], seconds: float | None
) -> None:
    from batchline.adapters.providers._errors import retry_after

    assert retry_after(headers) == seconds
