"""Vertex AI Gemini batch prediction: encoding requests and normalising results. Pure: no SDK,
no I/O.

A chunk's payload is staged as Vertex's own input file, one `{"request": GenerateContentRequest}`
per line, so that the batch prediction job reads the staged object itself: nothing is
uploaded twice. Output rows carry no id and come in any order; each request therefore
carries batchline's request id in its `labels` (`batchline_request_id`), which the row
echoes back with the request.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import orjson

from batchline.domain.ids import request_id
from batchline.domain.models import BatchState, BatchTag, ProviderResult, ResultStatus
from batchline.domain.requests import Request

NAME = "vertex"
MODEL_PATH_PREFIX = "publishers/google/models/"

#: The request label that carries batchline's request id through the batch.
REQUEST_ID_LABEL = "batchline_request_id"
#: Job labels: which batchline job and chunk a batch prediction job was made for.
JOB_LABEL = "batchline_job"
CHUNK_LABEL = "batchline_chunk"

#: Every `JobState` (by name and by number, as the REST transport may send either).
BATCH_STATES: dict[str, BatchState] = {
    "JOB_STATE_UNSPECIFIED": BatchState.QUEUED,
    "JOB_STATE_QUEUED": BatchState.QUEUED,  # may wait up to 72 h for capacity
    "JOB_STATE_PENDING": BatchState.QUEUED,
    "JOB_STATE_RUNNING": BatchState.RUNNING,
    "JOB_STATE_SUCCEEDED": BatchState.COMPLETED,
    "JOB_STATE_FAILED": BatchState.FAILED,
    "JOB_STATE_CANCELLING": BatchState.CANCELING,
    "JOB_STATE_CANCELLED": BatchState.CANCELED,
    "JOB_STATE_PAUSED": BatchState.RUNNING,  # not ended: it resumes
    "JOB_STATE_EXPIRED": BatchState.EXPIRED,
    "JOB_STATE_UPDATING": BatchState.RUNNING,
    # Some rows failed: they are in the output with a non-empty status, like any failure.
    "JOB_STATE_PARTIALLY_SUCCEEDED": BatchState.COMPLETED,
}
_STATE_NUMBERS = {
    0: "JOB_STATE_UNSPECIFIED",
    1: "JOB_STATE_QUEUED",
    2: "JOB_STATE_PENDING",
    3: "JOB_STATE_RUNNING",
    4: "JOB_STATE_SUCCEEDED",
    5: "JOB_STATE_FAILED",
    6: "JOB_STATE_CANCELLING",
    7: "JOB_STATE_CANCELLED",
    8: "JOB_STATE_PAUSED",
    9: "JOB_STATE_EXPIRED",
    10: "JOB_STATE_UPDATING",
    11: "JOB_STATE_PARTIALLY_SUCCEEDED",
}

#: Google status codes whose failure a later attempt may get past.
RETRYABLE_STATUSES = frozenset(
    {"RESOURCE_EXHAUSTED", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "UNKNOWN"}
)
_STATUS_WORD = re.compile(
    r"\b(OK|CANCELLED|UNKNOWN|INVALID_ARGUMENT|DEADLINE_EXCEEDED|NOT_FOUND|ALREADY_EXISTS|"
    r"PERMISSION_DENIED|RESOURCE_EXHAUSTED|FAILED_PRECONDITION|ABORTED|OUT_OF_RANGE|"
    r"UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS|UNAUTHENTICATED)\b"
)
_HTTP_CODE = re.compile(r'"code"\s*:\s*(\d{3})\b')
#: gRPC code numbers (as in a job's `error.code`) by name.
GRPC_CODES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


def model_path(model: str) -> str:
    """The job's `model`: Google's publisher model path for a Gemini model id."""
    return MODEL_PATH_PREFIX + model


def encode(request: Request) -> bytes:
    """One line of the batch prediction input file, `{"request": ...}`, LF-terminated."""
    return orjson.dumps(encode_line(request), option=orjson.OPT_APPEND_NEWLINE)


def encode_line(request: Request) -> dict[str, Any]:
    """One line of the batch prediction input file, `{"request": ...}`.

    Native requests pass untouched but for the request id label. batchline lines map
    `messages` to `contents` (`assistant` becomes Gemini's `model`; `system` messages join
    the system instruction), `system` to `systemInstruction`, and `max_tokens`,
    `temperature` and `stop` to `generationConfig`; `metadata` stays batchline's own.
    """
    rid = request_id(request.line)
    if request.native is not None:
        body = dict(request.native)
        body["labels"] = {**(body.get("labels") or {}), REQUEST_ID_LABEL: rid}
    else:
        body = _from_params(request.params or {})
        if request.schema is not None:
            config = body.setdefault("generationConfig", {})
            config["responseMimeType"] = "application/json"
            config["responseJsonSchema"] = request.schema.schema
        body["labels"] = {REQUEST_ID_LABEL: rid}
    return {"request": body}


def add_repair_turn(line: dict[str, Any], answer: str, feedback: str) -> None:
    """Append the previous answer and what was wrong with it to a staged request line."""
    request = line["request"]
    request["contents"] = [
        *request["contents"],
        {"role": "model", "parts": [{"text": answer or "(no answer)"}]},
        {"role": "user", "parts": [{"text": feedback}]},
    ]


def _from_params(params: dict[str, Any]) -> dict[str, Any]:
    contents: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    if "system" in params:
        system.append({"text": params["system"]})
    for message in params["messages"]:
        parts = _parts(message["content"])
        role = message["role"]
        if role == "system":
            system.extend(parts)
        else:
            contents.append({"role": "user" if role == "user" else "model", "parts": parts})
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    if "max_tokens" in params:
        config["maxOutputTokens"] = params["max_tokens"]
    if "temperature" in params:
        config["temperature"] = params["temperature"]
    if "stop" in params:
        config["stopSequences"] = params["stop"]
    if config:
        body["generationConfig"] = config
    return body


def _parts(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    return [{"text": part["text"]} if part.get("type") == "text" else part for part in content]


def timestamp(value: Any) -> float | None:
    """Epoch seconds of a protobuf JSON timestamp (`2026-01-02T03:04:05.123456789Z`)."""
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    # Up to nanoseconds on the wire; Python parses microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    return dt.datetime.fromisoformat(text).timestamp()


def state_name(native: dict[str, Any]) -> str:
    state = native.get("state", 0)
    if isinstance(state, int):
        return _STATE_NUMBERS.get(state, "JOB_STATE_UNSPECIFIED")
    return str(state)


def batch_state(native: dict[str, Any]) -> BatchState:
    return BATCH_STATES.get(state_name(native), BatchState.RUNNING)


def batch_counts(native: dict[str, Any]) -> dict[str, int]:
    """batchline's counts from `completionStats` (int64s, sent as strings).

    Rows never run (`incompleteCount`, after a cancel, failure or expiry) count as failed,
    as canceled and expired requests do for the other providers.
    """
    stats = native.get("completionStats") or {}
    succeeded = int(stats.get("successfulCount") or 0)
    failed = int(stats.get("failedCount") or 0)
    incomplete = int(stats.get("incompleteCount") or 0)
    return {
        "total": succeeded + failed + incomplete,
        "completed": succeeded,
        "failed": failed + incomplete,
    }


def batch_tag(native: dict[str, Any]) -> BatchTag | None:
    labels = native.get("labels") or {}
    if JOB_LABEL not in labels or CHUNK_LABEL not in labels:
        return None
    try:
        return BatchTag(labels[JOB_LABEL], int(labels[CHUNK_LABEL]))
    except ValueError:
        return None


def job_labels(tag: BatchTag) -> dict[str, str]:
    return {JOB_LABEL: tag.job_id, CHUNK_LABEL: str(tag.chunk)}


def tag_filter(tag: BatchTag) -> str:
    """A `list` filter that matches the jobs carrying `tag`."""
    return f'labels.{JOB_LABEL}="{tag.job_id}" AND labels.{CHUNK_LABEL}="{tag.chunk}"'


def batch_errors(native: dict[str, Any]) -> tuple[str, ...]:
    error = native.get("error") or {}
    if not error.get("message") and not error.get("code"):
        return ()
    code = error.get("code")
    name = GRPC_CODES.get(code, str(code)) if isinstance(code, int) else str(code or "")
    return (f"{name}: {error.get('message') or 'the job failed'}",)


def is_predictions_file(uri: str) -> bool:
    """Whether `uri` is one of a job's prediction files (`predictions*.jsonl`)."""
    name = uri.rsplit("/", 1)[-1]
    return name.startswith("predictions") and name.endswith(".jsonl")


def normalise(row: dict[str, Any]) -> ProviderResult:
    """One row of a prediction file: `{"status", "processed_time", "request", "response"}`."""
    request = row.get("request")
    labels = request.get("labels") if isinstance(request, dict) else None
    rid = str(labels.get(REQUEST_ID_LABEL, "")) if isinstance(labels, dict) else ""
    status = row.get("status")
    response = row.get("response")
    if status or not isinstance(response, dict):
        # The row itself, less the echoed request: what Vertex said about this request.
        kept = {k: v for k, v in row.items() if k != "request"}
        return ProviderResult(rid, ResultStatus.FAILED, error=row_error(status), response=kept)
    return _success(rid, response)


def row_error(status: Any) -> dict[str, Any]:
    """batchline's error for a failed row's `status` (a message, often with a JSON error)."""
    if isinstance(status, dict):
        code = status.get("code")
        word = GRPC_CODES.get(code) if isinstance(code, int) else None
        message = str(status.get("message") or word or "the request failed")
        text = orjson.dumps(status).decode()
    else:
        message = str(status or "the row has no response")
        text, word = message, None
    found = _STATUS_WORD.search(text)
    word = word or (found.group(1) if found else None)
    http = _HTTP_CODE.search(text)
    code = int(http.group(1)) if http else None
    retryable = word in RETRYABLE_STATUSES or (code is not None and (code == 429 or code >= 500))
    kind = word.lower() if word else (f"http_{code}" if code else "vertex_error")
    return {"type": kind, "message": message, "retryable": retryable}


def _success(rid: str, response: dict[str, Any]) -> ProviderResult:
    candidates = response.get("candidates") or []
    first = candidates[0] if candidates and isinstance(candidates[0], dict) else {}
    parts = (first.get("content") or {}).get("parts") or []
    # Thought summaries are not the answer.
    texts = [
        p["text"]
        for p in parts
        if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
    ]
    finish = first.get("finishReason")
    if finish is None and not candidates:
        finish = (response.get("promptFeedback") or {}).get("blockReason")
    usage = response.get("usageMetadata") or {}
    # Thinking tokens are billed as output.
    output_tokens = int(usage.get("candidatesTokenCount") or 0) + int(
        usage.get("thoughtsTokenCount") or 0
    )
    return ProviderResult(
        request_id=rid,
        status=ResultStatus.SUCCEEDED,
        text="".join(texts) if texts else None,
        finish_reason=str(finish) if finish is not None else None,
        usage={
            "input_tokens": int(usage.get("promptTokenCount") or 0),
            "output_tokens": output_tokens,
            "cached_input_tokens": int(usage.get("cachedContentTokenCount") or 0),
        },
        response=response,
    )
