"""OpenAI Batch API: encoding requests and normalising results. Pure: no SDK, no I/O."""

from __future__ import annotations

from typing import Any

import orjson

from batchline.domain.ids import request_id
from batchline.domain.models import BatchState, ProviderResult, ResultStatus
from batchline.domain.requests import OPENAI_CHAT_URL, Request
from batchline.domain.schemas import ResponseSchema, openai_strict

NAME = "openai"
ENDPOINT = OPENAI_CHAT_URL

BATCH_STATES: dict[str, BatchState] = {
    "validating": BatchState.QUEUED,
    "in_progress": BatchState.RUNNING,
    "finalizing": BatchState.RUNNING,
    "completed": BatchState.COMPLETED,
    "failed": BatchState.FAILED,
    "expired": BatchState.EXPIRED,
    "cancelling": BatchState.CANCELING,
    "cancelled": BatchState.CANCELED,
}

_LINE_PREFIX = b'{"custom_id":"'


def encode(request: Request) -> bytes:
    """One line of the batch input file, LF-terminated."""
    return orjson.dumps(encode_line(request), option=orjson.OPT_APPEND_NEWLINE)


def encode_line(request: Request) -> dict[str, Any]:
    """One line of the batch input file, as an object."""
    if request.native is not None:
        body = request.native
    else:
        params = request.params or {}
        messages = params["messages"]
        if "system" in params:
            messages = [{"role": "system", "content": params["system"]}, *messages]
        body = {"model": request.model, "messages": messages}
        if "max_tokens" in params:
            body["max_completion_tokens"] = params["max_tokens"]
        if "temperature" in params:
            body["temperature"] = params["temperature"]
        if "stop" in params:
            body["stop"] = params["stop"]
        if request.schema is not None:
            body["response_format"] = response_format(request.schema)
    return {
        "custom_id": request_id(request.line),
        "method": "POST",
        "url": ENDPOINT,
        "body": body,
    }


def response_format(schema: ResponseSchema) -> dict[str, Any]:
    """Structured outputs: strict when the schema has a strict form of the same meaning,
    else the schema as given, non-strict (and the answer is validated on collect)."""
    strict = openai_strict(schema)
    return {
        "type": "json_schema",
        "json_schema": {
            "name": schema.name,
            "schema": strict if strict is not None else schema.schema,
            "strict": strict is not None,
        },
    }


def add_repair_turn(line: dict[str, Any], answer: str, feedback: str) -> None:
    """Append the previous answer and what was wrong with it to a staged request line."""
    line["body"]["messages"] = [
        *line["body"]["messages"],
        {"role": "assistant", "content": answer},
        {"role": "user", "content": feedback},
    ]


def normalise(line: dict[str, Any]) -> ProviderResult:
    """One line of an output or error file (they share one envelope)."""
    rid = str(line.get("custom_id", ""))
    response = line.get("response")
    error = line.get("error")
    if isinstance(response, dict):
        status_code = int(response.get("status_code") or 0)
        body = response.get("body")
        if 200 <= status_code < 300 and isinstance(body, dict):
            return _success(rid, body)
        body_error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(body_error, dict):
            body_error = {}
        return ProviderResult(
            request_id=rid,
            status=ResultStatus.FAILED,
            error={
                "type": body_error.get("type") or body_error.get("code") or f"http_{status_code}",
                "message": body_error.get("message") or f"HTTP {status_code}",
                "retryable": status_code == 429 or status_code >= 500,
            },
            response=body,
        )
    error = error if isinstance(error, dict) else {}
    code = str(error.get("code") or "unknown_error")
    status = ResultStatus.EXPIRED if code == "batch_expired" else ResultStatus.FAILED
    return ProviderResult(
        request_id=rid,
        status=status,
        error={
            "type": code,
            "message": str(error.get("message") or code),
            "retryable": status is ResultStatus.EXPIRED,
        },
        response=None,
    )


def _success(rid: str, body: dict[str, Any]) -> ProviderResult:
    choices = body.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    message = first.get("message") or {}
    usage = body.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return ProviderResult(
        request_id=rid,
        status=ResultStatus.SUCCEEDED,
        text=message.get("content"),
        finish_reason=first.get("finish_reason"),
        usage={
            "input_tokens": int(usage.get("prompt_tokens") or 0),
            "output_tokens": int(usage.get("completion_tokens") or 0),
            "cached_input_tokens": int(details.get("cached_tokens") or 0),
        },
        response=body,
    )
