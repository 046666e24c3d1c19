"""Anthropic Message Batches: the provider's descriptor. Pure: no SDK, no I/O.

Its native lines (`custom_id`, `params`), what a batchline line may ask of it (no
`temperature`), its schema encoding (a forced tool), request encoding, result
normalisation, token counting (3.5 characters per token), repair turn, limits and
settings. The client is `adapters/providers/anthropic.py`.

A chunk's payload is staged as JSONL, one `{"custom_id", "params"}` per line, like every
provider's. Anthropic takes a JSON body `{"requests": [...]}` instead of a file:
`request_body` turns the staged lines into that body part by part (the newline between
two lines becomes the comma between two array items), so the body is never built as a
second copy of the payload, and `ENVELOPE_BYTES` is what it adds to the payload's size.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchline.domain.ids import request_id
from batchline.domain.models import BatchState, ProviderResult, ResultStatus
from batchline.domain.providers.base import (
    ChunkLimits,
    Encoder,
    InvalidField,
    NativeContext,
    Request,
    check_fields,
    check_known_fields,
    check_messages_field,
    check_model_id,
    check_role,
    content_items,
    content_modalities,
    env_limits,
    env_number,
    env_text,
    kind,
    margin_limits,
    no_check,
)
from batchline.domain.providers.tokens import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    RequestParts,
    TokenRule,
    compact_json,
    positive_count,
)
from batchline.domain.quotas import QuotaPolicy, QuotaUnit
from batchline.domain.schemas import ResponseSchema, check_expressible
from batchline.errors import ConfigError

NAME = "anthropic"
# Anthropic's own limits are 100,000 requests and 256 MB of request body per batch.
MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1000 * 1000
#: What one batch may hold by default: the provider's limits less a 5% margin.
DEFAULT_LIMITS = margin_limits(MAX_REQUESTS, MAX_BYTES)
# Anthropic requires max_tokens on every request: lines that give none get this.
DEFAULT_MAX_TOKENS = 1024
#: Anthropic's rule of thumb for Claude.
CHARS_PER_TOKEN = 3.5
IMAGE_TOKENS = 1600
#: Anthropic's tool-use system prompt, by tool_choice type (Claude 4.x).
TOOL_PROMPT_TOKENS = {"auto": 346, "none": 346, "any": 313, "tool": 313}

_NATIVE_FIELDS = frozenset({"custom_id", "params"})
# Anthropic's messages are {role, content}; its SDK's MessageParam takes these roles.
_ROLES = frozenset({"user", "assistant", "system"})
MESSAGE_FIELDS = frozenset({"role", "content"})

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
    """`encode` with the deployment's default `max_tokens` bound."""

    def encode_request(request: Request) -> bytes:
        return encode(request, default_max_tokens)

    return encode_request


def make_line_encoder(default_max_tokens: int) -> Callable[[Request], dict[str, Any]]:
    """`encode_line` with the deployment's default `max_tokens` bound."""

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


# ------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class AnthropicSettings:
    """Anthropic's settings block: where its API is, its key, the chunk limits and the
    `max_tokens` of requests that give none."""

    # e.g. an emulator's http://127.0.0.1:P (no /v1); None is Anthropic's own.
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    limits: ChunkLimits = DEFAULT_LIMITS
    max_tokens: int = DEFAULT_MAX_TOKENS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AnthropicSettings:
        """BATCHLINE_ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY, BATCHLINE_ANTHROPIC_MAX_REQUESTS/
        _BYTES and BATCHLINE_ANTHROPIC_MAX_TOKENS (a positive integer)."""
        max_tokens = int(env_number(env, "BATCHLINE_ANTHROPIC_MAX_TOKENS", cls.max_tokens))
        if max_tokens < 1:
            raise ConfigError("BATCHLINE_ANTHROPIC_MAX_TOKENS must be a positive integer")
        return cls(
            base_url=env_text(env, "BATCHLINE_ANTHROPIC_BASE_URL"),
            api_key=env_text(env, "ANTHROPIC_API_KEY"),
            limits=env_limits(
                env,
                "BATCHLINE_ANTHROPIC_MAX_REQUESTS",
                "BATCHLINE_ANTHROPIC_MAX_BYTES",
                cls.limits,
            ),
            max_tokens=max_tokens,
        )


# -------------------------------------------------------------------- input lines


def parse_native(obj: dict[str, Any], context: NativeContext) -> tuple[str, dict[str, Any]]:
    """(model id, params) of a native line; raises `InvalidField` naming the field."""
    check_known_fields(obj, _NATIVE_FIELDS, "an Anthropic batch line")
    params = obj.get("params")
    if not isinstance(params, dict):
        raise InvalidField("params", f"expected an object, got {kind(params)}")
    model = params.get("model")
    if model is None:
        model = context.default_for(NAME, "params.model", "an Anthropic model")
        params = {**params, "model": model}
    elif not isinstance(model, str) or not model:
        raise InvalidField("params.model", f"expected a non-empty string, got {kind(model)}")
    else:
        check_model_id(model, "params.model")
    if params.get("stream"):
        raise InvalidField("params.stream", "a batch request cannot stream")
    check_messages_field(params, "params", check_message)
    return model, params


def check_message(where: str, message: dict[str, Any]) -> None:
    """An Anthropic message: a role it takes, only `role` and `content`, content a string
    or a non-empty list of content blocks (which pass through as given)."""
    check_role(where, message, _ROLES, "Anthropic takes")
    check_fields(where, message, MESSAGE_FIELDS, "an Anthropic message")
    content = content_items(where, message, "blocks")
    if content is None:
        return
    for j, block in enumerate(content):
        # Blocks pass through as given (text, image, document, ...): Anthropic checks them.
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidField(
                f"{where}.content[{j}]", "expected a content block (an object with a 'type')"
            )


def check_temperature(temperature: Any) -> None:
    """Always refused: the SDK's MessageCreateParams has no temperature, and models from
    Claude Opus 4.7 on answer 400 to it: a value batchline cannot deliver is an error."""
    raise InvalidField(
        "temperature",
        "Anthropic's Messages API takes no temperature (deprecated; newer models reject "
        "it): remove it, or send it in an Anthropic native line",
    )


def native_schema(body: dict[str, Any]) -> tuple[Any, str | None] | None:
    """The `input_schema` of the tool that `tool_choice` forces, with its name, or None."""
    choice = body.get("tool_choice")
    found = None
    if isinstance(choice, dict) and choice.get("type") == "tool":
        tools = body.get("tools")
        for tool in tools if isinstance(tools, list) else ():
            if isinstance(tool, dict) and tool.get("name") == choice.get("name"):
                found = tool.get("input_schema"), tool.get("name")
    return found


def check_schema(schema: ResponseSchema) -> None:
    """A tool's `input_schema` takes an object at the root."""
    check_expressible(schema, NAME, root_object_in="a tool's input_schema")


#: Content blocks that ask a model for more than text: images, and documents (PDFs).
_BLOCK_MODALITIES = {"image": "image", "document": "pdf"}


def input_modalities(messages: Any) -> frozenset[str]:
    """`image` blocks ask for images, `document` blocks (PDFs) for PDFs."""
    return content_modalities(messages, lambda block: _BLOCK_MODALITIES.get(str(block.get("type"))))


# ------------------------------------------------------------------------- tokens


def token_parts(line: dict[str, Any]) -> RequestParts:
    """What a request line (or bare params) bills: system, messages, tools (and the tool-use
    system prompt); its `max_tokens`."""
    params = line.get("params", line)
    if not isinstance(params, dict):
        return RequestParts([])
    parts = RequestParts([], fixed_tokens=REPLY_PRIMING_TOKENS)
    texts = parts.texts
    system = params.get("system")
    if isinstance(system, str):
        texts.append(system)
    elif isinstance(system, list):
        parts.fixed_tokens += _blocks(system, texts)
    messages = params.get("messages")
    if isinstance(messages, list):
        parts.fixed_tokens += TOKENS_PER_MESSAGE * len(messages)
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                parts.fixed_tokens += _blocks(content, texts)
    tools = params.get("tools")
    if isinstance(tools, list) and tools:
        texts.extend(compact_json(tool) for tool in tools)
        choice = params.get("tool_choice")
        choice_type = choice.get("type") if isinstance(choice, dict) else None
        parts.fixed_tokens += TOOL_PROMPT_TOKENS.get(str(choice_type or "auto"), 346)
    parts.max_output = positive_count(params.get("max_tokens"))
    return parts


def _blocks(blocks: list[Any], texts: list[str]) -> int:
    fixed = 0
    for block in blocks:
        if not isinstance(block, dict):
            continue
        block_type = block.get("type")
        if block_type == "text":
            text = block.get("text")
            if isinstance(text, str):
                texts.append(text)
        elif block_type == "image":
            fixed += IMAGE_TOKENS
        elif block_type == "tool_use":
            texts.append(str(block.get("name") or ""))
            texts.append(compact_json(block.get("input")))
        elif block_type == "tool_result":
            content = block.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                fixed += _blocks(content, texts)
        elif block_type == "document":
            source = block.get("source")
            if (
                isinstance(source, dict)
                and source.get("type") == "text"
                and isinstance(source.get("data"), str)
            ):
                texts.append(source["data"])
        # Thinking blocks of earlier turns are not billed as input; PDFs are not counted.
    return fixed


# --------------------------------------------------------------------- descriptor


#: Requests in the Message Batches processing queue, one queue for every model: 100,000
#: at tier 1, the lowest paid tier (rate limits, "Message Batches API"); a create that
#: would pass it is answered 429 `rate_limit_error`.
QUOTA = QuotaPolicy(QuotaUnit.QUEUED_REQUESTS, per_model=False, default=100_000)


class Anthropic:
    """Anthropic Message Batches' descriptor (see `domain.providers.base.Provider`)."""

    name = NAME
    native_keys = frozenset({"params"})
    #: A native line's id is its `custom_id`.
    id_key: str | None = None
    #: Where a native line names its model.
    model_field = "params.model"
    #: Requests in the processing queue, shared by its models.
    quota = QUOTA

    settings_from_env = staticmethod(AnthropicSettings.from_env)
    parse_native = staticmethod(parse_native)
    native_schema = staticmethod(native_schema)
    check_message = staticmethod(check_message)
    check_temperature = staticmethod(check_temperature)
    check_stop = staticmethod(no_check)
    check_schema = staticmethod(check_schema)
    input_modalities = staticmethod(input_modalities)
    add_repair_turn = staticmethod(add_repair_turn)
    token_parts = staticmethod(token_parts)

    def chunk_limits(self, settings: AnthropicSettings) -> ChunkLimits:
        """The limit is on the request body, which wraps the payload in
        `{"requests":[...]}`: the settings' limits with that envelope."""
        return ChunkLimits(settings.limits.max_requests, settings.limits.max_bytes, ENVELOPE_BYTES)

    def encoder(self, settings: AnthropicSettings) -> Encoder:
        """`encode_line` with the settings' default `max_tokens`."""
        return make_line_encoder(settings.max_tokens)

    def model_id(self, model: str) -> str:
        """The model id as written."""
        return model

    def strips_nulls(self, schema: ResponseSchema) -> bool:
        """False: a forced tool's input is the answer as given."""
        return False

    def token_rule(self, model: str) -> TokenRule:
        """3.5 characters per token."""
        return TokenRule(chars_per_token=CHARS_PER_TOKEN)


DESCRIPTOR = Anthropic()
