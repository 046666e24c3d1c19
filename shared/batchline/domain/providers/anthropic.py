"""Anthropic Message Batches: encoding requests and normalising results. Pure: no SDK, no I/O.

A chunk's payload is staged as JSONL, one `{"custom_id", "params"}` per line, like every
provider's. Anthropic takes a JSON body `{"requests": [...]}` instead of a file:
`request_body` turns the staged lines into that body part by part (the newline between
two lines becomes the comma between two array items), so the body is never built as a
second copy of the payload, and `ENVELOPE_BYTES` is what it adds to the payload's size.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from batchline.domain.ids import request_id
from batchline.domain.models import BatchState, ProviderResult, ResultStatus
from batchline.domain.requests import Request

NAME = "anthropic"

BODY_PREFIX = b'{"requests":['
BODY_SUFFIX = b"]}"
# The payload's last newline is not sent: it becomes the closing bracket.
ENVELOPE_BYTES = len(BODY_PREFIX) + len(BODY_SUFFIX) - 1

# Error types Anthropic documents; the ones a later attempt may get past are retryable.
RETRYABLE_ERRORS = frozenset({"api_error", "overloaded_error", "rate_limit_error", "timeout_error"})

_CANCELED = {
    "type": "batch_canceled",
    "message": "the batch was canceled before this request ran",
    "retryable": False,
}
_EXPIRED = {
    "type": "batch_expired",
    "message": "the batch expired before this request ran",
    "retryable": True,
}


def encode(request: Request, default_max_tokens: int) -> bytes:
    """One Message Batches request, `{"custom_id", "params"}`, LF-terminated."""
    return orjson.dumps(encode_line(request, default_max_tokens), option=orjson.OPT_APPEND_NEWLINE)


def encode_line(request: Request, default_max_tokens: int) -> dict[str, Any]:
    """One Message Batches request, `{"custom_id", "params"}`.

    Native params pass untouched, except that a missing `max_tokens` (Anthropic requires
    it) gets the deployment's default. batchline lines map `system`, `messages`,
    `max_tokens` and `stop` (as `stop_sequences`); their `metadata` is batchline's own
    and is not sent (Anthropic's `metadata` takes only a `user_id`).
    """
    if request.native is not None:
        params = request.native
        if "max_tokens" not in params:
            params = {**params, "max_tokens": default_max_tokens}
    else:
        given = request.params or {}
        params = {
            "model": request.model,
            "max_tokens": given.get("max_tokens", default_max_tokens),
            "messages": given["messages"],
        }
        if "system" in given:
            params["system"] = given["system"]
        if "stop" in given:
            params["stop_sequences"] = given["stop"]
        if request.schema is not None:
            # Structured output: one tool whose input is the answer, and the model made to
            # call it; the answer is the tool_use block's `input`.
            params["tools"] = [
                {
                    "name": request.schema.name,
                    "description": TOOL_DESCRIPTION,
                    "input_schema": request.schema.schema,
                }
            ]
            params["tool_choice"] = {"type": "tool", "name": request.schema.name}
    return {"custom_id": request_id(request.line), "params": params}


TOOL_DESCRIPTION = "Give the answer: its input is the answer, in the required structure."


def add_repair_turn(line: dict[str, Any], answer: str, feedback: str) -> None:
    """Append the previous answer (as text) and what was wrong with it to a staged line."""
    params = line["params"]
    params["messages"] = [
        *params["messages"],
        {"role": "assistant", "content": answer or "(no answer)"},
        {"role": "user", "content": feedback},
    ]


def make_encoder(default_max_tokens: int) -> Callable[[Request], bytes]:
    def encode_request(request: Request) -> bytes:
        return encode(request, default_max_tokens)

    return encode_request


def make_line_encoder(default_max_tokens: int) -> Callable[[Request], dict[str, Any]]:
    def encode_request(request: Request) -> dict[str, Any]:
        return encode_line(request, default_max_tokens)

    return encode_request


def request_body_size(payload_size: int) -> int:
    """Bytes of the request body made from a payload of `payload_size` bytes."""
    return payload_size + ENVELOPE_BYTES


def request_body(payload: bytes | bytearray, part_size: int = 1024 * 1024) -> Iterator[bytes]:
    """The create-batch body for a staged payload (LF-terminated JSONL lines), in parts.

    Each part is at most `part_size` bytes: memory stays near the payload itself.
    """
    if not payload.endswith(b"\n"):
        raise ValueError("a staged payload ends with a newline")
    yield BODY_PREFIX
    end = len(payload) - 1
    for start in range(0, end, part_size):
        yield bytes(payload[start : min(start + part_size, end)]).replace(b"\n", b",")
    yield BODY_SUFFIX


def timestamp(value: Any) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp (Anthropic's `created_at` and the rest)."""
    if not value:
        return None
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def batch_state(native: dict[str, Any]) -> BatchState:
    """`processing_status` (`in_progress | canceling | ended`) as batchline's state.

    An ended batch says how it ended only through its counts and timestamps: canceled if a
    cancel was asked for, expired if requests expired (the 24 h window ran out), else
    completed.
    """
    status = native.get("processing_status")
    if status == "in_progress":
        return BatchState.RUNNING
    if status == "canceling":
        return BatchState.CANCELING
    if status != "ended":
        return BatchState.RUNNING
    if native.get("cancel_initiated_at"):
        return BatchState.CANCELED
    if int((native.get("request_counts") or {}).get("expired") or 0) > 0:
        return BatchState.EXPIRED
    return BatchState.COMPLETED


def request_total(native: dict[str, Any]) -> int:
    """Every request of the batch, whatever its state (the counts always add up to it)."""
    counts = native.get("request_counts") or {}
    return sum(int(v or 0) for v in counts.values())


def batch_counts(native: dict[str, Any]) -> dict[str, int]:
    """batchline's counts (`total`, `completed`, `failed`).

    Anthropic keeps every count but `processing` at 0 until the whole batch has ended, so
    a running batch shows its total and nothing done, then everything at once.
    """
    counts = native.get("request_counts") or {}
    failed = sum(int(counts.get(k) or 0) for k in ("errored", "canceled", "expired"))
    return {
        "total": request_total(native),
        "completed": int(counts.get("succeeded") or 0),
        "failed": failed,
    }


def normalise(line: dict[str, Any]) -> ProviderResult:
    """One line of a batch's results (`{"custom_id", "result"}`)."""
    rid = str(line.get("custom_id", ""))
    result = line.get("result")
    if not isinstance(result, dict):
        result = {}
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message")
        return _success(rid, message if isinstance(message, dict) else {})
    if kind == "canceled":
        return ProviderResult(rid, ResultStatus.CANCELED, error=dict(_CANCELED))
    if kind == "expired":
        return ProviderResult(rid, ResultStatus.EXPIRED, error=dict(_EXPIRED))
    response = result.get("error")
    inner = response.get("error") if isinstance(response, dict) else None
    if not isinstance(inner, dict):
        inner = {}
    error_type = str(inner.get("type") or kind or "unknown_error")
    return ProviderResult(
        rid,
        ResultStatus.FAILED,
        error={
            "type": error_type,
            "message": str(inner.get("message") or error_type),
            "retryable": error_type in RETRYABLE_ERRORS,
        },
        response=response,
    )


def _success(rid: str, message: dict[str, Any]) -> ProviderResult:
    texts = []
    structured = None
    for block in message.get("content") or ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and "text" in block:
            texts.append(block["text"])
        elif kind == "tool_use" and structured is None:
            # A forced tool's answer: the first tool_use block's input (batchline asks for one).
            given = block.get("input")
            structured = given if isinstance(given, dict) else None
    usage = message.get("usage") or {}
    # Total input is uncached + cache-creation + cache-read tokens (Anthropic's definition).
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    input_tokens = int(usage.get("input_tokens") or 0) + cache_write + cache_read
    by_ttl = usage.get("cache_creation") or {}
    hour = int(by_ttl.get("ephemeral_1h_input_tokens") or 0) if isinstance(by_ttl, dict) else 0
    normalised = {
        "input_tokens": input_tokens,
        "output_tokens": int(usage.get("output_tokens") or 0),
        "cached_input_tokens": cache_read,
        "cache_write_input_tokens": cache_write,
    }
    if hour:  # billed at twice the input rate, not 1.25x: only where there is any
        normalised["cache_write_1h_input_tokens"] = hour
    return ProviderResult(
        request_id=rid,
        status=ResultStatus.SUCCEEDED,
        text="".join(texts) if texts else None,
        finish_reason=message.get("stop_reason"),
        usage=normalised,
        response=message,
        structured=structured,
    )
