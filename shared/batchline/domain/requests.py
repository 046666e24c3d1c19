"""Parsing one input line into a provider-bound `Request` or an `InvalidLine`.

Four line formats exist (DESIGN.md "Input"); the format is detected per line. Every
rejection names the line, the field and the reason, so a user can fix the file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson

from batchline.domain.lines import LineTooLong
from batchline.domain.providers import vertex_schema
from batchline.domain.schemas import ResponseSchema, SchemaError, check_for_provider

# Providers batchline knows of, and the ones this deployment can run.
KNOWN_PROVIDERS = frozenset({"openai", "anthropic", "vertex"})
ENABLED_PROVIDERS = frozenset({"openai", "anthropic", "vertex"})

OPENAI_CHAT_URL = "/v1/chat/completions"
OPENAI_MAX_STOP = 4
VERTEX_MAX_STOP = 5
MAX_CUSTOM_ID_CHARS = 512
# orjson reads an integer beyond 64 bits as a float at least this large.
_BEYOND_64_BITS = 2.0**63

#: A model id, after its `provider/` prefix. A model name ends up in provider resource
#: paths (Vertex: `publishers/google/models/<id>`) and URLs, so every provider's ids are
#: held to one strict charset: no `/`, no `..` path, no spaces or control characters.
#: Real ids pass: `gpt-4.1-mini-2025-04-14`, `ft:gpt-4o-mini:org:my_suffix:abc123`,
#: `claude-sonnet-4-5@20250929`, `gemini-2.5-flash`.
MODEL_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}"
_MODEL_ID = re.compile(MODEL_ID_PATTERN)
# A file names a few models on many lines: remember some good names and ids (a lookup is
# cheaper than checking again, on every line), never so many that input could grow them
# without end.
_GOOD_MODELS: dict[str, tuple[str, str]] = {}
_GOOD_MODELS_KEPT = 1024
_GOOD_MODEL_IDS: set[str] = set()
_GOOD_MODEL_IDS_KEPT = 1024

_BATCHLINE_FIELDS = frozenset(
    {
        "custom_id",
        "model",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "metadata",
        "stop",
        "response_schema",
        "schema",
    }
)
_OPENAI_NATIVE_FIELDS = frozenset({"custom_id", "method", "url", "body"})
_ANTHROPIC_NATIVE_FIELDS = frozenset({"custom_id", "params"})
_ROLES = frozenset({"user", "assistant", "system", "developer", "tool"})
# Anthropic's messages are {role, content}; its SDK's MessageParam takes these roles.
_ANTHROPIC_ROLES = frozenset({"user", "assistant", "system"})
_ANTHROPIC_MESSAGE_FIELDS = frozenset({"role", "content"})
_VERTEX_NATIVE_FIELDS = frozenset({"custom_id", "key", "request"})
# batchline roles on a Vertex line: `assistant` (or Gemini's own `model`) becomes `model`,
# `system` joins the system instruction.
_VERTEX_ROLES = frozenset({"user", "assistant", "model", "system"})
# A Gemini `Part` (JSON names, and the proto names the JSON parser also takes).
VERTEX_PART_FIELDS = frozenset(
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
VERTEX_REQUEST_FIELDS = frozenset(
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
_VERTEX_CONTENT_FIELDS = frozenset({"role", "parts"})
_VERTEX_CONTENT_ROLES = frozenset({"user", "model"})
VERTEX_MODEL_PATH = "publishers/google/models/"
_VERTEX_MODEL_PREFIXES = (VERTEX_MODEL_PATH, "vertex/")


@dataclass(frozen=True, slots=True)
class Request:
    """A valid request, bound to one provider and model.

    `params` holds the provider-neutral fields of a batchline line; `native` the body of a
    provider-native line, passed to the provider untouched.
    """

    line: int
    custom_id: str | None  # None: none given, one is generated (`line-<n>`)
    provider: str
    model: str
    params: dict[str, Any] | None = None
    native: dict[str, Any] | None = None
    #: The schema the answer must match: batchline lines' `response_schema`/`schema` (or
    #: the job's default), encoded for the provider; native lines' own structured-output
    #: setting, which passes untouched and is only used to validate the answer.
    schema: ResponseSchema | None = None


#: Finds a registered schema by name; raises SchemaError when there is none.
SchemaLookup = Callable[[str], ResponseSchema]


@dataclass(frozen=True, slots=True)
class SchemaContext:
    """What a line's schema may refer to: registered schemas and the job's default."""

    lookup: SchemaLookup | None = None
    default: ResponseSchema | None = None


_NO_SCHEMAS = SchemaContext()
_checked: dict[tuple[str, str], str | None] = {}


def _check_expressible(schema: ResponseSchema, provider: str, field: str) -> None:
    key = (schema.digest, provider)
    if key not in _checked:
        try:
            check_for_provider(schema, provider)
            _checked[key] = None
        except SchemaError as exc:
            _checked[key] = str(exc)
    problem = _checked[key]
    if problem is not None:
        raise _Invalid(field, problem)


@dataclass(frozen=True, slots=True)
class InvalidLine:
    line: int
    custom_id: str | None
    field: str
    reason: str

    @property
    def message(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


class _Invalid(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def parse_line(
    number: int,
    raw: bytes | LineTooLong,
    *,
    default_model: str | None,
    max_line_bytes: int,
    schemas: SchemaContext = _NO_SCHEMAS,
) -> Request | InvalidLine:
    if isinstance(raw, LineTooLong):
        return InvalidLine(
            number,
            raw.custom_id,
            "line",
            f"{raw.size} bytes exceeds the limit of {max_line_bytes} bytes",
        )
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = "not valid UTF-8" if "utf-8" in str(exc).lower() else f"not valid JSON ({exc})"
        return InvalidLine(number, None, "line", reason)
    if not isinstance(obj, dict):
        return InvalidLine(number, None, "line", f"expected a JSON object, got {_kind(obj)}")
    # A Vertex native line may name itself with Vertex's own `key` instead of custom_id.
    id_field = "key" if "request" in obj and "custom_id" not in obj and "key" in obj else None
    custom_id = obj.get(id_field or "custom_id")
    shown_id = custom_id if isinstance(custom_id, str) else None
    try:
        custom_id = _custom_id(custom_id, id_field or "custom_id")
        if "body" in obj or "method" in obj or "url" in obj:
            return _with_native_schema(_openai_native(number, custom_id, obj, default_model))
        if "params" in obj:
            return _with_native_schema(_anthropic_native(number, custom_id, obj, default_model))
        if "request" in obj:
            return _with_native_schema(_vertex_native(number, custom_id, obj, default_model))
        return _batchline(number, custom_id, obj, default_model, schemas)
    except _Invalid as exc:
        return InvalidLine(number, shown_id, exc.field, exc.reason)


def _custom_id(value: Any, field: str = "custom_id") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(field, f"expected a string, got {_kind(value)}")
    if not value:
        raise _Invalid(field, "must not be empty")
    if len(value) > MAX_CUSTOM_ID_CHARS:
        raise _Invalid(field, f"longer than {MAX_CUSTOM_ID_CHARS} characters")
    return value


def model_id_problem(model_id: str) -> str | None:
    """Why `model_id` (a model without its `provider/` prefix) is not a model id, or None."""
    if model_id in _GOOD_MODEL_IDS:
        return None
    if _MODEL_ID.fullmatch(model_id):
        if len(_GOOD_MODEL_IDS) < _GOOD_MODEL_IDS_KEPT:
            _GOOD_MODEL_IDS.add(model_id)
        return None
    return (
        f"{_shown(model_id)} is not a model id: allowed are {MODEL_ID_PATTERN} (letters, "
        "digits and . _ : @ -, starting with a letter or digit, at most 128 characters)"
    )


def model_problem(value: object) -> str | None:
    """Why `value` is not a usable `provider/model` name, or None.

    The one check of a job's default model (object metadata `model`, the API's
    `options.model`) and of a batchline line's `model`: the form, a known and enabled
    provider, and the model id's charset (`MODEL_ID_PATTERN`).
    """
    try:
        split_model(value)
    except _Invalid as exc:
        return exc.reason
    return None


def split_model(value: Any, field: str = "model") -> tuple[str, str]:
    """(provider, model id) of a `provider/model` name; raises `_Invalid` naming `field`."""
    try:
        return _GOOD_MODELS[value]  # the common case: a name seen before
    except (KeyError, TypeError):
        pass
    if not isinstance(value, str):
        raise _Invalid(field, f"expected a string like 'openai/gpt-4.1-mini', got {_kind(value)}")
    provider, sep, model = value.partition("/")
    if not sep or not provider or not model:
        raise _Invalid(
            field, f"expected 'provider/model' (e.g. 'openai/gpt-4.1-mini'), got {_shown(value)}"
        )
    if provider not in KNOWN_PROVIDERS:
        raise _Invalid(
            field,
            f"unknown provider {_shown(provider)} (known: {', '.join(sorted(KNOWN_PROVIDERS))})",
        )
    if provider not in ENABLED_PROVIDERS:
        raise _Invalid(field, f"provider {provider!r} is not enabled in this deployment")
    if provider == "vertex":
        # Google's publisher path names the same model (`vertex/publishers/google/models/x`).
        model = model.removeprefix(VERTEX_MODEL_PATH)
    problem = model_id_problem(model)
    if problem is not None:
        raise _Invalid(field, problem)
    if len(_GOOD_MODELS) < _GOOD_MODELS_KEPT:
        _GOOD_MODELS[value] = (provider, model)
    return provider, model


def _batchline(
    number: int,
    custom_id: str | None,
    obj: dict[str, Any],
    default_model: str | None,
    schemas: SchemaContext,
) -> Request:
    for key in obj:
        if key not in _BATCHLINE_FIELDS:
            raise _Invalid(key, "unknown field")
    if "model" in obj:
        provider, model = split_model(obj["model"])
    elif default_model:
        provider, model = split_model(default_model, "model (job default)")
    else:
        raise _Invalid("model", "missing, and the job has no default model")
    messages = obj.get("messages")
    if messages is None:
        raise _Invalid("messages", "missing")
    _check_messages(messages, provider)
    params: dict[str, Any] = {"messages": messages}
    system = obj.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise _Invalid("system", f"expected a string, got {_kind(system)}")
        params["system"] = system
    max_tokens = obj.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            if isinstance(max_tokens, float) and abs(max_tokens) >= _BEYOND_64_BITS:
                # orjson reads an integer past 64 bits as a float: show no changed value.
                raise _Invalid(
                    "max_tokens", "expected a positive integer, got a number beyond 64 bits"
                )
            raise _Invalid("max_tokens", f"expected a positive integer, got {max_tokens!r}")
        params["max_tokens"] = max_tokens
    temperature = obj.get("temperature")
    if temperature is not None and provider == "anthropic":
        # The SDK's MessageCreateParams has no temperature, and models from Claude Opus 4.7
        # on answer 400 to it: a value batchline cannot deliver is an error, not a no-op.
        raise _Invalid(
            "temperature",
            "Anthropic's Messages API takes no temperature (deprecated; newer models reject "
            "it): remove it, or send it in an Anthropic native line",
        )
    if temperature is not None:
        if (
            not isinstance(temperature, int | float)
            or isinstance(temperature, bool)
            or not math.isfinite(temperature)
            or not 0 <= temperature <= 2
        ):
            raise _Invalid("temperature", f"expected a number from 0 to 2, got {temperature!r}")
        params["temperature"] = temperature
    stop = obj.get("stop")
    if stop is not None:
        if not (isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop)):
            raise _Invalid("stop", "expected a non-empty list of strings")
        if provider == "openai" and len(stop) > OPENAI_MAX_STOP:
            raise _Invalid("stop", f"OpenAI takes at most {OPENAI_MAX_STOP} stop sequences")
        if provider == "vertex" and len(stop) > VERTEX_MAX_STOP:
            raise _Invalid("stop", f"Gemini takes at most {VERTEX_MAX_STOP} stop sequences")
        params["stop"] = stop
    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _Invalid("metadata", f"expected an object, got {_kind(metadata)}")
    schema, field = _line_schema(obj, schemas)
    if schema is not None:
        _check_expressible(schema, provider, field)
    return Request(number, custom_id, provider, model, params=params, schema=schema)


def _line_schema(obj: dict[str, Any], schemas: SchemaContext) -> tuple[ResponseSchema | None, str]:
    if "response_schema" in obj and "schema" in obj:
        raise _Invalid("schema", "give either response_schema or schema, not both")
    if "response_schema" in obj:
        try:
            return ResponseSchema.from_line_value(obj["response_schema"]), "response_schema"
        except SchemaError as exc:
            where = f"response_schema.{exc.where}" if exc.where else "response_schema"
            raise _Invalid(where, exc.reason) from None
    if "schema" in obj:
        name = obj["schema"]
        if not isinstance(name, str) or not name:
            raise _Invalid("schema", f"expected the name of a registered schema, got {_kind(name)}")
        if schemas.lookup is None:
            raise _Invalid("schema", "no registered schemas are available to this job")
        try:
            return schemas.lookup(name), "schema"
        except SchemaError as exc:
            raise _Invalid("schema", str(exc)) from None
    return schemas.default, "schema (job default)"


def _with_native_schema(request: Request) -> Request:
    """A native line's own structured-output setting, kept to validate its answer."""
    body = request.native or {}
    raw: Any = None
    name: str | None = None
    if request.provider == "openai":
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema")
            if isinstance(spec, dict):
                raw, name = spec.get("schema"), spec.get("name")
    elif request.provider == "anthropic":
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "tool":
            tools = body.get("tools")
            for tool in tools if isinstance(tools, list) else ():
                if isinstance(tool, dict) and tool.get("name") == choice.get("name"):
                    raw, name = tool.get("input_schema"), tool.get("name")
    elif request.provider == "vertex":
        config = body.get("generationConfig") or body.get("generation_config") or {}
        json_mode = (
            isinstance(config, dict)
            and (config.get("responseMimeType") or config.get("response_mime_type"))
            == "application/json"
        )
        # Only a JSON answer is validated (enum mode, text/x.enum, answers a bare value).
        if json_mode:
            raw = config.get("responseJsonSchema") or config.get("response_json_schema")
            google = config.get("responseSchema") or config.get("response_schema")
            if raw is None and google is not None:
                try:
                    raw = vertex_schema.as_json_schema(google)
                except SchemaError as exc:
                    where = f"request.generationConfig.{exc.where}"
                    raise _Invalid(where, exc.reason) from None
    if raw is None:
        return request
    try:
        schema = ResponseSchema.create(raw, name if isinstance(name, str) else None)
    except SchemaError as exc:
        raise _Invalid("schema", f"the line's own schema is unusable: {exc}") from None
    return replace(request, schema=schema)


def _check_messages(messages: Any, provider: str) -> None:
    if not isinstance(messages, list):
        raise _Invalid("messages", f"expected a list, got {_kind(messages)}")
    if not messages:
        raise _Invalid("messages", "must not be empty")
    anthropic = provider == "anthropic"
    vertex = provider == "vertex"
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _Invalid(where, f"expected an object, got {_kind(message)}")
        role = message.get("role")
        if anthropic:
            _check_anthropic_message(where, message)
            continue
        if vertex:
            _check_vertex_message(where, message)
            continue
        try:
            known = role in _ROLES
        except TypeError:  # a list or object where a role goes
            known = False
        if not known:
            raise _Invalid(f"{where}.role", f"expected one of {sorted(_ROLES)}, got {role!r}")
        content = message.get("content")
        if content is None and role == "assistant" and message.get("tool_calls"):
            continue  # an assistant turn that only calls tools has no content
        if not isinstance(content, str | list):
            raise _Invalid(
                f"{where}.content", f"expected a string or a list of parts, got {_kind(content)}"
            )
        if isinstance(content, list) and not content:
            raise _Invalid(f"{where}.content", "must not be an empty list")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise _Invalid(f"{where}.tool_call_id", "required on a tool message")


def _check_anthropic_message(where: str, message: dict[str, Any]) -> None:
    role = message.get("role")
    try:
        known = role in _ANTHROPIC_ROLES
    except TypeError:  # a list or object where a role goes
        known = False
    if not known:
        raise _Invalid(
            f"{where}.role",
            f"Anthropic takes one of {sorted(_ANTHROPIC_ROLES)}, got {role!r}",
        )
    for key in message:
        if key not in _ANTHROPIC_MESSAGE_FIELDS:
            raise _Invalid(f"{where}.{key}", "not a field of an Anthropic message")
    content = message.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _Invalid(
            f"{where}.content", f"expected a string or a list of blocks, got {_kind(content)}"
        )
    if not content:
        raise _Invalid(f"{where}.content", "must not be an empty list")
    for j, block in enumerate(content):
        # Blocks pass through as given (text, image, document, ...): Anthropic checks them.
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _Invalid(
                f"{where}.content[{j}]", "expected a content block (an object with a 'type')"
            )


def _check_vertex_message(where: str, message: dict[str, Any]) -> None:
    role = message.get("role")
    try:
        known = role in _VERTEX_ROLES
    except TypeError:  # a list or object where a role goes
        known = False
    if not known:
        raise _Invalid(
            f"{where}.role", f"a Vertex line takes one of {sorted(_VERTEX_ROLES)}, got {role!r}"
        )
    for key in message:
        if key not in _ANTHROPIC_MESSAGE_FIELDS:
            raise _Invalid(f"{where}.{key}", "not a field of a message for Vertex")
    content = message.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _Invalid(
            f"{where}.content", f"expected a string or a list of parts, got {_kind(content)}"
        )
    if not content:
        raise _Invalid(f"{where}.content", "must not be an empty list")
    for j, part in enumerate(content):
        spot = f"{where}.content[{j}]"
        if not isinstance(part, dict) or not part:
            raise _Invalid(spot, "expected a part (an object)")
        if "type" in part:
            # The neutral form, {"type": "text", "text": ...}, becomes Gemini's {"text": ...}.
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _Invalid(
                    spot,
                    "a typed part must be {'type': 'text', 'text': ...}; other kinds go "
                    "as Gemini parts (inlineData, fileData, ...)",
                )
            if set(part) != {"type", "text"}:
                raise _Invalid(spot, "a text part takes only 'type' and 'text'")
            continue
        _check_vertex_part(spot, part)
        if role == "system" and not isinstance(part.get("text"), str):
            raise _Invalid(spot, "a system message takes text parts only")


def _check_vertex_part(spot: str, part: dict[str, Any]) -> None:
    for key in part:
        if key not in VERTEX_PART_FIELDS:
            raise _Invalid(f"{spot}.{key}", "not a field of a Gemini part")


def _vertex_native(
    number: int, custom_id: str | None, obj: dict[str, Any], default_model: str | None
) -> Request:
    for key in obj:
        if key not in _VERTEX_NATIVE_FIELDS:
            raise _Invalid(key, "unknown field in a Vertex batch line")
    if "key" in obj and "custom_id" in obj and obj["key"] != obj["custom_id"]:
        raise _Invalid("key", "give the line one id: custom_id or key")
    if "key" in obj:
        _custom_id(obj["key"], "key")
    body = obj.get("request")
    if not isinstance(body, dict):
        raise _Invalid("request", f"expected an object, got {_kind(body)}")
    for key in body:
        if key not in VERTEX_REQUEST_FIELDS:
            raise _Invalid(f"request.{key}", "not a field of a Gemini GenerateContentRequest")
    contents = body.get("contents")
    if contents is None:
        raise _Invalid("request.contents", "missing")
    if not isinstance(contents, list):
        raise _Invalid("request.contents", f"expected a list, got {_kind(contents)}")
    if not contents:
        raise _Invalid("request.contents", "must not be empty")
    for i, content in enumerate(contents):
        where = f"request.contents[{i}]"
        if not isinstance(content, dict):
            raise _Invalid(where, f"expected an object, got {_kind(content)}")
        for key in content:
            if key not in _VERTEX_CONTENT_FIELDS:
                raise _Invalid(f"{where}.{key}", "not a field of a Gemini Content")
        role = content.get("role")
        try:
            known = role in _VERTEX_CONTENT_ROLES
        except TypeError:  # a list or object where a role goes
            known = False
        if role is not None and not known:
            raise _Invalid(
                f"{where}.role", f"expected one of {sorted(_VERTEX_CONTENT_ROLES)}, got {role!r}"
            )
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise _Invalid(f"{where}.parts", "expected a non-empty list of parts")
        for j, part in enumerate(parts):
            if not isinstance(part, dict) or not part:
                raise _Invalid(f"{where}.parts[{j}]", "expected a part (an object)")
            _check_vertex_part(f"{where}.parts[{j}]", part)
    labels = body.get("labels")
    if labels is not None and not (
        isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
    ):
        raise _Invalid("request.labels", "expected an object of string values")
    model = body.get("model")
    if model is None:
        if not default_model:
            raise _Invalid("request.model", "missing, and the job has no default model")
        provider, model = split_model(default_model, "model (job default)")
        if provider != "vertex":
            raise _Invalid(
                "request.model",
                f"missing, and the job default {default_model!r} is not a Vertex model",
            )
    else:
        if not isinstance(model, str) or not model:
            raise _Invalid("request.model", f"expected a non-empty string, got {_kind(model)}")
        # The batch job names the model; the line only picks which batch it goes to.
        model = vertex_model_id(model)
        if not model:
            raise _Invalid("request.model", "expected e.g. 'gemini-2.5-flash'")
        _check_model_id(model, "request.model")
        body = {k: v for k, v in body.items() if k != "model"}
    return Request(number, custom_id, "vertex", model, native=body)


def vertex_model_id(name: str) -> str:
    """`gemini-2.5-flash` from itself, `vertex/gemini-2.5-flash` or
    `publishers/google/models/gemini-2.5-flash`; empty for any other path."""
    for prefix in _VERTEX_MODEL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return "" if "/" in name else name


def _openai_native(
    number: int, custom_id: str | None, obj: dict[str, Any], default_model: str | None
) -> Request:
    for key in obj:
        if key not in _OPENAI_NATIVE_FIELDS:
            raise _Invalid(key, "unknown field in an OpenAI batch line")
    if obj.get("method") != "POST":
        raise _Invalid("method", f"expected 'POST', got {obj.get('method')!r}")
    if obj.get("url") != OPENAI_CHAT_URL:
        raise _Invalid("url", f"expected {OPENAI_CHAT_URL!r}, got {obj.get('url')!r}")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise _Invalid("body", f"expected an object, got {_kind(body)}")
    model = body.get("model")
    if model is None:
        if not default_model:
            raise _Invalid("body.model", "missing, and the job has no default model")
        provider, model = split_model(default_model, "model (job default)")
        if provider != "openai":
            raise _Invalid(
                "body.model",
                f"missing, and the job default {default_model!r} is not an OpenAI model",
            )
        body = {**body, "model": model}
    elif not isinstance(model, str) or not model:
        raise _Invalid("body.model", f"expected a non-empty string, got {_kind(model)}")
    else:
        _check_model_id(model, "body.model")
    _check_messages_field(body, "body", "openai")
    return Request(number, custom_id, "openai", model, native=body)


def _anthropic_native(
    number: int, custom_id: str | None, obj: dict[str, Any], default_model: str | None
) -> Request:
    for key in obj:
        if key not in _ANTHROPIC_NATIVE_FIELDS:
            raise _Invalid(key, "unknown field in an Anthropic batch line")
    params = obj.get("params")
    if not isinstance(params, dict):
        raise _Invalid("params", f"expected an object, got {_kind(params)}")
    model = params.get("model")
    if model is None:
        if not default_model:
            raise _Invalid("params.model", "missing, and the job has no default model")
        provider, model = split_model(default_model, "model (job default)")
        if provider != "anthropic":
            raise _Invalid(
                "params.model",
                f"missing, and the job default {default_model!r} is not an Anthropic model",
            )
        params = {**params, "model": model}
    elif not isinstance(model, str) or not model:
        raise _Invalid("params.model", f"expected a non-empty string, got {_kind(model)}")
    else:
        _check_model_id(model, "params.model")
    if params.get("stream"):
        raise _Invalid("params.stream", "a batch request cannot stream")
    _check_messages_field(params, "params", "anthropic")
    return Request(number, custom_id, "anthropic", model, native=params)


def _check_messages_field(body: dict[str, Any], name: str, provider: str) -> None:
    if "messages" not in body:
        raise _Invalid(f"{name}.messages", "missing")
    try:
        _check_messages(body["messages"], provider)
    except _Invalid as exc:
        raise _Invalid(f"{name}.{exc.field}", exc.reason) from None


def _check_model_id(model: str, field: str) -> None:
    problem = model_id_problem(model)
    if problem is not None:
        raise _Invalid(field, problem)


def _shown(value: str, limit: int = 80) -> str:
    """`value` for an error message: quoted, and cut when long (a line may hold anything)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} chars)"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
