"""Vertex AI Gemini batch prediction: the provider's descriptor. Pure: no SDK, no I/O.

Its native lines (`request`, a `GenerateContentRequest`, with an optional `key`), what a
batchline line may ask of it, the schemas Gemini cannot express, request encoding, result
normalisation, token counting (4 characters per token), repair turn, limits and settings.
The client is `adapters/providers/vertex.py`.

A chunk's payload is staged as Vertex's own input file, one `{"request": GenerateContentRequest}`
per line, so that the batch prediction job reads the staged object itself: nothing is
uploaded twice. Output rows carry no id and come in any order; each request therefore
carries batchline's request id in its `labels` (`batchline_request_id`), which the row
echoes back with the request.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from batchline.domain.ids import request_id
from batchline.domain.models import BatchState, BatchTag, ProviderResult, ResultStatus
from batchline.domain.providers import vertex_schema
from batchline.domain.providers.base import (
    ChunkLimits,
    Encoder,
    InvalidField,
    NativeContext,
    Request,
    check_custom_id,
    check_fields,
    check_model_id,
    check_role,
    content_items,
    content_modalities,
    env_limits,
    env_text,
    kind,
    margin_limits,
    no_check,
    role_is,
)
from batchline.domain.providers.tokens import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    RequestParts,
    TokenRule,
    compact_json,
    either,
    positive_count,
)
from batchline.domain.quotas import QuotaPolicy, QuotaUnit
from batchline.domain.schemas import (
    GEMINI_INEXPRESSIBLE,
    ResponseSchema,
    SchemaError,
    check_expressible,
)

NAME = "vertex"
MODEL_PATH_PREFIX = "publishers/google/models/"
_MODEL_PREFIXES = (MODEL_PATH_PREFIX, "vertex/")
# Vertex AI's own limits are 200,000 requests and a 1 GB input file per job.
MAX_REQUESTS = 200_000
MAX_BYTES = 1000 * 1000 * 1000
#: What one batch may hold by default: the provider's limits less a 5% margin.
DEFAULT_LIMITS = margin_limits(MAX_REQUESTS, MAX_BYTES)
DEFAULT_LOCATION = "us-central1"
VERTEX_MAX_STOP = 5
#: Google's documented rule for Gemini.
CHARS_PER_TOKEN = 4.0
#: One image up to 384x384, or one 768x768 tile.
IMAGE_TOKENS = 258

_NATIVE_FIELDS = frozenset({"custom_id", "key", "request"})
# batchline roles on a Vertex line: `assistant` (or Gemini's own `model`) becomes `model`,
# `system` joins the system instruction.
_ROLES = frozenset({"user", "assistant", "model", "system"})
_MESSAGE_FIELDS = frozenset({"role", "content"})
# A Gemini `Part` (JSON names, and the proto names the JSON parser also takes).
PART_FIELDS = frozenset(
    {
        "text",
        "inlineData",
        "inline_data",
        "fileData",
        "file_data",
        "functionCall",
        "function_call",
        "functionResponse",
        "function_response",
        "executableCode",
        "executable_code",
        "codeExecutionResult",
        "code_execution_result",
        "thought",
        "thoughtSignature",
        "thought_signature",
        "videoMetadata",
        "video_metadata",
        "mediaResolution",
        "media_resolution",
    }
)
# The fields of a `GenerateContentRequest` (JSON names and proto names).
REQUEST_FIELDS = frozenset(
    {
        "model",
        "contents",
        "systemInstruction",
        "system_instruction",
        "cachedContent",
        "cached_content",
        "tools",
        "toolConfig",
        "tool_config",
        "labels",
        "safetySettings",
        "safety_settings",
        "modelArmorConfig",
        "model_armor_config",
        "generationConfig",
        "generation_config",
    }
)
_CONTENT_FIELDS = frozenset({"role", "parts"})
_CONTENT_ROLES = frozenset({"user", "model"})

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
    """The job's `state` by name (the REST transport may send its number)."""
    state = native.get("state", 0)
    if isinstance(state, int):
        return _STATE_NUMBERS.get(state, "JOB_STATE_UNSPECIFIED")
    return str(state)


def batch_state(native: dict[str, Any]) -> BatchState:
    """The job's state as batchline's (`BATCH_STATES`; an unknown one is running)."""
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
    """The batchline job and chunk a job's labels name, or None."""
    labels = native.get("labels") or {}
    if JOB_LABEL not in labels or CHUNK_LABEL not in labels:
        return None
    try:
        return BatchTag(labels[JOB_LABEL], int(labels[CHUNK_LABEL]))
    except ValueError:
        return None


def job_labels(tag: BatchTag) -> dict[str, str]:
    """The labels that tag a job with its batchline job and chunk."""
    return {JOB_LABEL: tag.job_id, CHUNK_LABEL: str(tag.chunk)}


def tag_filter(tag: BatchTag) -> str:
    """A `list` filter that matches the jobs carrying `tag`."""
    return f'labels.{JOB_LABEL}="{tag.job_id}" AND labels.{CHUNK_LABEL}="{tag.chunk}"'


def batch_errors(native: dict[str, Any]) -> tuple[str, ...]:
    """The job's error as `CODE: message`, or nothing."""
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


# ------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class VertexSettings:
    """Vertex AI's settings block: where its batch prediction jobs run, how the client
    reaches the API, and the chunk limits."""

    # None: the deployment's own project.
    project: str | None = None
    location: str = DEFAULT_LOCATION
    # An http:// endpoint is an emulator (REST, no credentials); None is Google's regional
    # endpoint for `location`, with the default transport and credentials.
    api_endpoint: str | None = None
    limits: ChunkLimits = DEFAULT_LIMITS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> VertexSettings:
        """BATCHLINE_VERTEX_PROJECT, _LOCATION, _API_ENDPOINT and _MAX_REQUESTS/_BYTES."""
        return cls(
            project=env_text(env, "BATCHLINE_VERTEX_PROJECT"),
            location=env_text(env, "BATCHLINE_VERTEX_LOCATION") or cls.location,
            api_endpoint=env_text(env, "BATCHLINE_VERTEX_API_ENDPOINT"),
            limits=env_limits(
                env, "BATCHLINE_VERTEX_MAX_REQUESTS", "BATCHLINE_VERTEX_MAX_BYTES", cls.limits
            ),
        )


# -------------------------------------------------------------------- input lines


def vertex_model_id(name: str) -> str:
    """`gemini-2.5-flash` from itself, `vertex/gemini-2.5-flash` or
    `publishers/google/models/gemini-2.5-flash`; empty for any other path."""
    for prefix in _MODEL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return "" if "/" in name else name


def parse_native(obj: dict[str, Any], context: NativeContext) -> tuple[str, dict[str, Any]]:
    """(model id, request without its `model`) of a native line; raises `InvalidField`.

    Known request fields only, `contents` non-empty, roles `user` and `model`, known part
    fields. The batch job names the model; the line's `model` only picks its batch.
    """
    for key in obj:
        if key not in _NATIVE_FIELDS:
            raise InvalidField(key, "unknown field in a Vertex batch line")
    if "key" in obj and "custom_id" in obj and obj["key"] != obj["custom_id"]:
        raise InvalidField("key", "give the line one id: custom_id or key")
    if "key" in obj:
        check_custom_id(obj["key"], "key")
    body = obj.get("request")
    if not isinstance(body, dict):
        raise InvalidField("request", f"expected an object, got {kind(body)}")
    for key in body:
        if key not in REQUEST_FIELDS:
            raise InvalidField(f"request.{key}", "not a field of a Gemini GenerateContentRequest")
    _check_contents(body.get("contents"))
    labels = body.get("labels")
    if labels is not None and not (
        isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
    ):
        raise InvalidField("request.labels", "expected an object of string values")
    model = body.get("model")
    if model is None:
        return context.default_for(NAME, "request.model", "a Vertex model"), body
    if not isinstance(model, str) or not model:
        raise InvalidField("request.model", f"expected a non-empty string, got {kind(model)}")
    model = vertex_model_id(model)
    if not model:
        raise InvalidField("request.model", "expected e.g. 'gemini-2.5-flash'")
    check_model_id(model, "request.model")
    return model, {k: v for k, v in body.items() if k != "model"}


def _check_contents(contents: Any) -> None:
    if contents is None:
        raise InvalidField("request.contents", "missing")
    if not isinstance(contents, list):
        raise InvalidField("request.contents", f"expected a list, got {kind(contents)}")
    if not contents:
        raise InvalidField("request.contents", "must not be empty")
    for i, content in enumerate(contents):
        where = f"request.contents[{i}]"
        if not isinstance(content, dict):
            raise InvalidField(where, f"expected an object, got {kind(content)}")
        for key in content:
            if key not in _CONTENT_FIELDS:
                raise InvalidField(f"{where}.{key}", "not a field of a Gemini Content")
        role = content.get("role")
        if role is not None and not role_is(role, _CONTENT_ROLES):
            raise InvalidField(
                f"{where}.role", f"expected one of {sorted(_CONTENT_ROLES)}, got {role!r}"
            )
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise InvalidField(f"{where}.parts", "expected a non-empty list of parts")
        for j, part in enumerate(parts):
            if not isinstance(part, dict) or not part:
                raise InvalidField(f"{where}.parts[{j}]", "expected a part (an object)")
            _check_part(f"{where}.parts[{j}]", part)


def _check_part(spot: str, part: dict[str, Any]) -> None:
    for key in part:
        if key not in PART_FIELDS:
            raise InvalidField(f"{spot}.{key}", "not a field of a Gemini part")


def check_message(where: str, message: dict[str, Any]) -> None:
    """A batchline message for Vertex: a role it maps, only `role` and `content`, content
    a string or a non-empty list of parts (`{"type": "text", "text"}` or Gemini parts;
    text only in a system message)."""
    role = check_role(where, message, _ROLES, "a Vertex line takes")
    check_fields(where, message, _MESSAGE_FIELDS, "a message for Vertex")
    content = content_items(where, message, "parts")
    if content is None:
        return
    for j, part in enumerate(content):
        _check_message_part(f"{where}.content[{j}]", part, role)


def _check_message_part(spot: str, part: Any, role: Any) -> None:
    if not isinstance(part, dict) or not part:
        raise InvalidField(spot, "expected a part (an object)")
    if "type" in part:
        # The neutral form, {"type": "text", "text": ...}, becomes Gemini's {"text": ...}.
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidField(
                spot,
                "a typed part must be {'type': 'text', 'text': ...}; other kinds go "
                "as Gemini parts (inlineData, fileData, ...)",
            )
        if set(part) != {"type", "text"}:
            raise InvalidField(spot, "a text part takes only 'type' and 'text'")
        return
    _check_part(spot, part)
    if role == "system" and not isinstance(part.get("text"), str):
        raise InvalidField(spot, "a system message takes text parts only")


def check_stop(stop: list[str]) -> None:
    """At most `VERTEX_MAX_STOP` stop sequences."""
    if len(stop) > VERTEX_MAX_STOP:
        raise InvalidField("stop", f"Gemini takes at most {VERTEX_MAX_STOP} stop sequences")


def native_schema(body: dict[str, Any]) -> tuple[Any, str | None] | None:
    """In JSON mode only (enum mode answers a bare value): `responseJsonSchema`, or
    `responseSchema` translated to JSON Schema; raises `InvalidField` for a field Vertex's
    `Schema` does not have."""
    config = body.get("generationConfig") or body.get("generation_config") or {}
    json_mode = (
        isinstance(config, dict)
        and (config.get("responseMimeType") or config.get("response_mime_type"))
        == "application/json"
    )
    if not json_mode:
        return None
    raw = config.get("responseJsonSchema") or config.get("response_json_schema")
    google = config.get("responseSchema") or config.get("response_schema")
    if raw is None and google is not None:
        try:
            raw = vertex_schema.as_json_schema(google)
        except SchemaError as exc:
            raise InvalidField(f"request.generationConfig.{exc.where}", exc.reason) from None
    return None if raw is None else (raw, None)


def check_schema(schema: ResponseSchema) -> None:
    """Gemini's responseJsonSchema cannot express some keywords (`GEMINI_INEXPRESSIBLE`)."""
    check_expressible(
        schema,
        NAME,
        inexpressible=GEMINI_INEXPRESSIBLE,
        inexpressible_in="Gemini's responseJsonSchema",
    )


def input_modalities(messages: Any) -> frozenset[str]:
    """`inlineData`/`fileData` parts ask for what their MIME type says: `image/*` images,
    `application/pdf` PDFs."""
    return content_modalities(messages, _part_modality)


def _part_modality(part: dict[str, Any]) -> str | None:
    for key in ("inlineData", "inline_data", "fileData", "file_data"):
        data = part.get(key)
        mime = either(data, "mimeType", "mime_type") if isinstance(data, dict) else None
        if isinstance(mime, str) and mime.startswith("image/"):
            return "image"
        if mime == "application/pdf":
            return "pdf"
    return None


# ------------------------------------------------------------------------- tokens


def token_parts(line: dict[str, Any]) -> RequestParts:
    """What a prediction input line (or a bare request) bills: system instruction,
    contents, tools and response schema; its `maxOutputTokens` and `candidateCount`."""
    request = line.get("request", line)
    if not isinstance(request, dict):
        return RequestParts([])
    parts = RequestParts([], fixed_tokens=REPLY_PRIMING_TOKENS)
    texts = parts.texts
    system = either(request, "systemInstruction", "system_instruction")
    if isinstance(system, dict) and isinstance(system.get("parts"), list):
        parts.fixed_tokens += _gemini_parts(system["parts"], texts)
    contents = request.get("contents")
    if isinstance(contents, list):
        parts.fixed_tokens += TOKENS_PER_MESSAGE * len(contents)
        for content in contents:
            if isinstance(content, dict) and isinstance(content.get("parts"), list):
                parts.fixed_tokens += _gemini_parts(content["parts"], texts)
    tools = request.get("tools")
    if tools and type(tools) is list:  # a native line may hold anything here
        texts.extend(compact_json(tool) for tool in tools)
    config = either(request, "generationConfig", "generation_config")
    if isinstance(config, dict):
        for camel, snake in (
            ("responseSchema", "response_schema"),
            ("responseJsonSchema", "response_json_schema"),
        ):
            schema = either(config, camel, snake)
            if schema is not None:
                texts.append(compact_json(schema))
        parts.max_output = positive_count(either(config, "maxOutputTokens", "max_output_tokens"))
        parts.choices = positive_count(either(config, "candidateCount", "candidate_count")) or 1
    return parts


def _gemini_parts(items: list[Any], texts: list[str]) -> int:
    fixed = 0
    for part in items:
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if isinstance(text, str):
            texts.append(text)
            continue
        for camel, snake in (("inlineData", "inline_data"), ("fileData", "file_data")):
            media = either(part, camel, snake)
            if isinstance(media, dict):
                mime = str(either(media, "mimeType", "mime_type") or "")
                if mime.startswith("image/"):
                    fixed += IMAGE_TOKENS
                # Audio, video and PDFs: not counted (see domain/estimate.py).
        for camel, snake in (
            ("functionCall", "function_call"),
            ("functionResponse", "function_response"),
        ):
            call = either(part, camel, snake)
            if call is not None:
                texts.append(compact_json(call))
        code = either(part, "executableCode", "executable_code")
        if isinstance(code, dict) and isinstance(code.get("code"), str):
            texts.append(code["code"])
    return fixed


# --------------------------------------------------------------------- descriptor


#: Batch prediction jobs running at once, per model (Vertex limits concurrent batch jobs
#: per region and model; past it a create is answered 429 RESOURCE_EXHAUSTED). Google
#: publishes no one number for every project: 4 is a conservative start, raised to what
#: the project's quota page shows.
QUOTA = QuotaPolicy(QuotaUnit.CONCURRENT_JOBS, per_model=True, default=4)


class Vertex:
    """Vertex AI Gemini batch prediction's descriptor (see `domain.providers.base.Provider`)."""

    name = NAME
    native_keys = frozenset({"request"})
    #: Vertex's own id, which a native line without `custom_id` may give instead.
    id_key: str | None = "key"
    #: Where a native line names its model.
    model_field = "request.model"
    #: Batch jobs at once, per model.
    quota = QUOTA

    settings_from_env = staticmethod(VertexSettings.from_env)
    parse_native = staticmethod(parse_native)
    native_schema = staticmethod(native_schema)
    check_message = staticmethod(check_message)
    check_temperature = staticmethod(no_check)
    check_stop = staticmethod(check_stop)
    check_schema = staticmethod(check_schema)
    input_modalities = staticmethod(input_modalities)
    add_repair_turn = staticmethod(add_repair_turn)
    token_parts = staticmethod(token_parts)

    def chunk_limits(self, settings: VertexSettings) -> ChunkLimits:
        """The settings' limits: the input file is the payload as it is."""
        return settings.limits

    def encoder(self, settings: VertexSettings) -> Encoder:
        """`encode_line`: nothing in it depends on the settings."""
        return encode_line

    def model_id(self, model: str) -> str:
        """Google's publisher path names the same model (`publishers/google/models/x`)."""
        return model.removeprefix(MODEL_PATH_PREFIX)

    def strips_nulls(self, schema: ResponseSchema) -> bool:
        """False: the answer is validated as given."""
        return False

    def token_rule(self, model: str) -> TokenRule:
        """4 characters per token."""
        return TokenRule(chars_per_token=CHARS_PER_TOKEN)


DESCRIPTOR = Vertex()
