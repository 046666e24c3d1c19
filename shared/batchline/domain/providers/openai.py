"""OpenAI Batch API: the provider's descriptor. Pure: no SDK, no I/O.

Its native lines (`custom_id`, `method`, `url`, `body`), what a batchline line may ask of
it, its schema encoding (strict mode where it keeps the schema's meaning), request
encoding, result normalisation, token counting (tiktoken), repair turn, limits and
settings. The client is `adapters/providers/openai.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    check_known_fields,
    check_messages_field,
    check_model_id,
    check_role,
    content_modalities,
    env_limits,
    env_text,
    kind,
    margin_limits,
    no_check,
)
from batchline.domain.providers.tokens import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    RequestParts,
    TokenRule,
    compact_json,
    positive_count,
)
from batchline.domain.quotas import QuotaPolicy, QuotaUnit
from batchline.domain.schemas import ResponseSchema, check_expressible, openai_strict

NAME = "openai"
OPENAI_CHAT_URL = "/v1/chat/completions"
ENDPOINT = OPENAI_CHAT_URL
OPENAI_MAX_STOP = 4
# OpenAI's own limits are 50,000 requests and 200 MB per input file.
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1000 * 1000
#: What one batch may hold by default: the provider's limits less a 5% margin.
DEFAULT_LIMITS = margin_limits(MAX_REQUESTS, MAX_BYTES)

_NATIVE_FIELDS = frozenset({"custom_id", "method", "url", "body"})
_ROLES = frozenset({"user", "assistant", "system", "developer", "tool"})

IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS = 765
_O200K_PREFIXES = (
    "gpt-4o",
    "chatgpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "gpt-oss",
    "o1",
    "o3",
    "o4",
    "codex-",
)
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-", "davinci-002", "babbage")

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


# ------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class OpenAISettings:
    """OpenAI's settings block: where its API is, its key, and the chunk limits."""

    # e.g. an emulator's http://127.0.0.1:P/v1; None is OpenAI's own.
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    limits: ChunkLimits = DEFAULT_LIMITS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OpenAISettings:
        """BATCHLINE_OPENAI_BASE_URL, OPENAI_API_KEY, BATCHLINE_OPENAI_MAX_REQUESTS/_BYTES."""
        return cls(
            base_url=env_text(env, "BATCHLINE_OPENAI_BASE_URL"),
            api_key=env_text(env, "OPENAI_API_KEY"),
            limits=env_limits(
                env, "BATCHLINE_OPENAI_MAX_REQUESTS", "BATCHLINE_OPENAI_MAX_BYTES", cls.limits
            ),
        )


# -------------------------------------------------------------------- input lines


def parse_native(obj: dict[str, Any], context: NativeContext) -> tuple[str, dict[str, Any]]:
    """(model id, body) of a native batch line; raises `InvalidField` naming the field."""
    check_known_fields(obj, _NATIVE_FIELDS, "an OpenAI batch line")
    if obj.get("method") != "POST":
        raise InvalidField("method", f"expected 'POST', got {obj.get('method')!r}")
    if obj.get("url") != OPENAI_CHAT_URL:
        raise InvalidField("url", f"expected {OPENAI_CHAT_URL!r}, got {obj.get('url')!r}")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise InvalidField("body", f"expected an object, got {kind(body)}")
    model = body.get("model")
    if model is None:
        model = context.default_for(NAME, "body.model", "an OpenAI model")
        body = {**body, "model": model}
    elif not isinstance(model, str) or not model:
        raise InvalidField("body.model", f"expected a non-empty string, got {kind(model)}")
    else:
        check_model_id(model, "body.model")
    check_messages_field(body, "body", check_message)
    return model, body


def check_message(where: str, message: dict[str, Any]) -> None:
    """A chat message: a known role, content a string or a non-empty list of parts (an
    assistant turn that only calls tools has none), a tool message's `tool_call_id`."""
    role = check_role(where, message, _ROLES, "expected")
    content = message.get("content")
    if content is None and role == "assistant" and message.get("tool_calls"):
        return  # an assistant turn that only calls tools has no content
    if not isinstance(content, str | list):
        raise InvalidField(
            f"{where}.content", f"expected a string or a list of parts, got {kind(content)}"
        )
    if isinstance(content, list) and not content:
        raise InvalidField(f"{where}.content", "must not be an empty list")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise InvalidField(f"{where}.tool_call_id", "required on a tool message")


def check_stop(stop: list[str]) -> None:
    """At most `OPENAI_MAX_STOP` stop sequences."""
    if len(stop) > OPENAI_MAX_STOP:
        raise InvalidField("stop", f"OpenAI takes at most {OPENAI_MAX_STOP} stop sequences")


def native_schema(body: dict[str, Any]) -> tuple[Any, str | None] | None:
    """A native body's `response_format` `json_schema`: (schema, name), or None."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        if isinstance(spec, dict):
            return spec.get("schema"), spec.get("name")
    return None


def check_schema(schema: ResponseSchema) -> None:
    """`response_format` takes an object at the root."""
    check_expressible(schema, NAME, root_object_in="response_format's schema")


#: Content parts that ask a model for more than text: images, and files (PDFs).
_PART_MODALITIES = {"image_url": "image", "file": "pdf"}


def input_modalities(messages: Any) -> frozenset[str]:
    """`image_url` parts ask for images, `file` parts (OpenAI takes PDFs) for PDFs."""
    return content_modalities(messages, lambda part: _PART_MODALITIES.get(str(part.get("type"))))


# ------------------------------------------------------------------------- tokens


def openai_encoding_name(model: str) -> str:
    """The tiktoken encoding of an OpenAI model (o200k_base for any model it cannot tell)."""
    if model.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if model.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


def token_parts(line: dict[str, Any]) -> RequestParts:
    """What a batch input line (or a bare body) bills: its messages (or another
    endpoint's text), tools and response format; its output limit and `n`."""
    body = line.get("body", line)
    if not isinstance(body, dict):
        return RequestParts([])
    parts = RequestParts([])
    messages = body.get("messages")
    if isinstance(messages, list):
        parts.fixed_tokens += REPLY_PRIMING_TOKENS + TOKENS_PER_MESSAGE * len(messages)
        for message in messages:
            if isinstance(message, dict):
                _message_parts(message, parts)
    else:
        # Other endpoints' text: `instructions`, and `input`/`prompt` as text or a list.
        for name in ("instructions", "input", "prompt"):
            value = body.get(name)
            if isinstance(value, str):
                parts.texts.append(value)
            elif isinstance(value, list):
                parts.texts.extend(v for v in value if isinstance(v, str))
    for name in ("tools", "functions"):
        tools = body.get(name)
        if tools and type(tools) is list:  # a native line may hold anything here
            parts.texts.extend(compact_json(tool) for tool in tools)
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and "json_schema" in response_format:
        parts.texts.append(compact_json(response_format["json_schema"]))
    limit = body.get("max_completion_tokens")
    parts.max_output = positive_count(body.get("max_tokens") if limit is None else limit)
    parts.choices = positive_count(body.get("n")) or 1
    return parts


def _message_parts(message: dict[str, Any], parts: RequestParts) -> None:
    texts = parts.texts
    role = message.get("role")
    if isinstance(role, str):
        texts.append(role)
    name = message.get("name")
    if isinstance(name, str):
        texts.append(name)
        parts.fixed_tokens += TOKENS_PER_NAME
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        parts.fixed_tokens += _content_parts(content, texts)
    calls = message.get("tool_calls")
    if calls and type(calls) is list:
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                texts.extend(
                    v
                    for v in (function.get("name"), function.get("arguments"))
                    if isinstance(v, str)
                )


def _content_parts(content: list[Any], texts: list[str]) -> int:
    fixed = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        part_type = part.get("type")
        if part_type in ("text", "input_text", "output_text"):
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
        elif part_type in ("image_url", "input_image"):
            image = part.get("image_url")
            detail = image.get("detail") if isinstance(image, dict) else part.get("detail")
            fixed += IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS
        elif part_type == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        # input_audio and file parts: not counted (see domain/estimate.py).
    return fixed


# --------------------------------------------------------------------- descriptor


#: The batch queue limits (enqueued input tokens per model) of OpenAI's tier 1, the
#: lowest paid tier (rate-limits guide, "Usage tiers"); a model not listed gets the
#: lowest of them. A batch over the limit is created, then fails with
#: `token_limit_exceeded`; batch creates past 2,000 an hour are answered 429.
TIER_1_QUEUE_LIMITS = {
    "gpt-4o": 90_000,
    "gpt-4o-mini": 2_000_000,
    "gpt-4.1": 900_000,
    "gpt-4.1-mini": 2_000_000,
    "gpt-4.1-nano": 2_000_000,
    "gpt-5": 900_000,
    "gpt-5-mini": 2_000_000,
    "gpt-5-nano": 2_000_000,
    "o3": 90_000,
    "o4-mini": 2_000_000,
}
QUOTA = QuotaPolicy(
    QuotaUnit.ENQUEUED_TOKENS,
    per_model=True,
    default=90_000,
    defaults=TIER_1_QUEUE_LIMITS,
    refusal_statuses=frozenset({429}),
    failure_codes=frozenset({"token_limit_exceeded"}),
)


class OpenAI:
    """The OpenAI Batch API's descriptor (see `domain.providers.base.Provider`)."""

    name = NAME
    native_keys = frozenset({"body", "method", "url"})
    #: A native line's id is its `custom_id`.
    id_key: str | None = None
    #: Where a native line names its model.
    model_field = "body.model"
    #: Enqueued input tokens, per model.
    quota = QUOTA

    settings_from_env = staticmethod(OpenAISettings.from_env)
    parse_native = staticmethod(parse_native)
    native_schema = staticmethod(native_schema)
    check_message = staticmethod(check_message)
    check_temperature = staticmethod(no_check)
    check_stop = staticmethod(check_stop)
    check_schema = staticmethod(check_schema)
    input_modalities = staticmethod(input_modalities)
    add_repair_turn = staticmethod(add_repair_turn)
    token_parts = staticmethod(token_parts)

    def chunk_limits(self, settings: OpenAISettings) -> ChunkLimits:
        """The settings' limits: the input file holds the payload as it is."""
        return settings.limits

    def encoder(self, settings: OpenAISettings) -> Encoder:
        """`encode_line`: nothing in it depends on the settings."""
        return encode_line

    def model_id(self, model: str) -> str:
        """The model id as written."""
        return model

    def strips_nulls(self, schema: ResponseSchema) -> bool:
        """Strict mode answers null for optional properties: whenever it is used."""
        return openai_strict(schema) is not None

    def token_rule(self, model: str) -> TokenRule:
        """tiktoken, with the model's encoding."""
        return TokenRule(encoding=openai_encoding_name(model))


DESCRIPTOR = OpenAI()
