"""Parsing one input line into a provider-bound `Request` or an `InvalidLine`.

Four line formats exist (DESIGN.md "Input"): batchline lines, and each provider's native
lines, which its descriptor recognises and checks (`domain/providers/registry.py`). The
format is detected per line. Every rejection names the line, the field and the reason, so
a user can fix the file. Which providers a line may use is a value the caller passes (the
deployment's `BATCHLINE_ENABLED_PROVIDERS`): a known provider that is not enabled makes
the line invalid, saying so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from typing import Any

import orjson

from batchline.domain.lines import LineTooLong
from batchline.domain.providers.base import MAX_CUSTOM_ID_CHARS as MAX_CUSTOM_ID_CHARS
from batchline.domain.providers.base import MODEL_ID_PATTERN as MODEL_ID_PATTERN
from batchline.domain.providers.base import (
    InvalidField,
    NativeContext,
    Provider,
    check_custom_id,
    check_messages,
    kind,
    shown,
)
from batchline.domain.providers.base import Request as Request
from batchline.domain.providers.base import model_id_problem as model_id_problem
from batchline.domain.providers.registry import KNOWN_PROVIDERS, PROVIDERS
from batchline.domain.schemas import ResponseSchema, SchemaError

#: A batchline line's model (or the job's default) that asks batchline to choose one
#: (`domain/selection.py`); the parser returns such a line's request unbound, with this
#: as its provider and model, checked for what every provider checks.
AUTO = "auto"

# orjson reads an integer beyond 64 bits as a float at least this large.
_BEYOND_64_BITS = 2.0**63

# A file names a few models on many lines: remember some good names (a lookup is cheaper
# than checking again, on every line), never so many that input could grow them without end.
_GOOD_MODELS: dict[str, tuple[str, str]] = {}
_GOOD_MODELS_KEPT = 1024

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
#: Native formats, told apart in the registry's order: (the keys that mark one, its
#: provider).
_NATIVE_FORMATS = tuple((p.native_keys, p) for p in PROVIDERS.values())
#: (the keys that mark a native format, the field of its own that may hold the line's id).
_ID_KEYS = tuple((p.native_keys, p.id_key) for p in PROVIDERS.values() if p.id_key)


#: Finds a registered schema by name; raises SchemaError when there is none.
SchemaLookup = Callable[[str], ResponseSchema]


@dataclass(frozen=True, slots=True)
class SchemaContext:
    """What a line's schema may refer to: registered schemas and the job's default."""

    lookup: SchemaLookup | None = None
    default: ResponseSchema | None = None


_NO_SCHEMAS = SchemaContext()
_checked: dict[tuple[str, str], str | None] = {}


def _check_expressible(schema: ResponseSchema, provider: Provider, field: str) -> None:
    key = (schema.digest, provider.name)
    if key not in _checked:
        try:
            provider.check_schema(schema)
            _checked[key] = None
        except SchemaError as exc:
            _checked[key] = str(exc)
    problem = _checked[key]
    if problem is not None:
        raise InvalidField(field, problem)


@dataclass(frozen=True, slots=True)
class InvalidLine:
    """A line that is not sent: its number, id (as given, if any), field and reason."""

    line: int
    custom_id: str | None
    field: str
    reason: str

    @property
    def message(self) -> str:
        """`line N: field: reason`, as results and logs show it."""
        return f"line {self.line}: {self.field}: {self.reason}"


def parse_line(
    number: int,
    raw: bytes | LineTooLong,
    *,
    default_model: str | None,
    max_line_bytes: int,
    schemas: SchemaContext = _NO_SCHEMAS,
    enabled: frozenset[str] = KNOWN_PROVIDERS,
) -> Request | InvalidLine:
    """Line `number` as a `Request` for one provider and model, or why it is invalid.

    `enabled` are the providers this deployment runs (default: every known one); a line
    for another known provider is invalid, naming its model field.
    """
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
        return InvalidLine(number, None, "line", f"expected a JSON object, got {kind(obj)}")
    keys = obj.keys()
    id_field = "custom_id"
    if id_field not in obj:
        # A provider's native line may name itself with a field of its own (Vertex's `key`).
        for marks, id_key in _ID_KEYS:
            if id_key in obj and not keys.isdisjoint(marks):
                id_field = id_key
                break
    custom_id = obj.get(id_field)
    shown_id = custom_id if isinstance(custom_id, str) else None
    try:
        custom_id = check_custom_id(custom_id, id_field)
        for marks, provider in _NATIVE_FORMATS:
            if not keys.isdisjoint(marks):
                return _native(number, custom_id, obj, provider, default_model, enabled)
        return _batchline(number, custom_id, obj, default_model, schemas, enabled)
    except InvalidField as exc:
        return InvalidLine(number, shown_id, exc.field, exc.reason)


def model_problem(value: object, enabled: frozenset[str] = KNOWN_PROVIDERS) -> str | None:
    """Why `value` is not a usable `provider/model` name, or None.

    The one check of a job's default model (object metadata `model`, the API's
    `options.model`) and of a batchline line's `model`: the form, a known provider (one of
    `enabled`), and the model id's charset (`MODEL_ID_PATTERN`); or `AUTO`.
    """
    if value == AUTO:
        return None
    try:
        split_model(value, enabled=enabled)
    except InvalidField as exc:
        return exc.reason
    return None


def split_model(
    value: Any, field: str = "model", enabled: frozenset[str] = KNOWN_PROVIDERS
) -> tuple[str, str]:
    """(provider, model id) of a `provider/model` name whose provider is one of `enabled`;
    raises `InvalidField` naming `field`."""
    try:
        provider, model = _GOOD_MODELS[value]  # the common case: a name seen before
    except (KeyError, TypeError):
        provider, model = _split_new_model(value, field, enabled)
    if provider not in enabled:
        raise InvalidField(field, f"provider {provider!r} is not enabled in this deployment")
    return provider, model


def _split_new_model(value: Any, field: str, enabled: frozenset[str]) -> tuple[str, str]:
    if not isinstance(value, str):
        raise InvalidField(
            field, f"expected a string like 'openai/gpt-4.1-mini', got {kind(value)}"
        )
    if value == AUTO:
        raise InvalidField(field, "'auto' chooses the model of batchline lines only; name one here")
    provider, sep, model = value.partition("/")
    if not sep or not provider or not model:
        raise InvalidField(
            field, f"expected 'provider/model' (e.g. 'openai/gpt-4.1-mini'), got {shown(value)}"
        )
    descriptor = PROVIDERS.get(provider)
    if descriptor is None:
        raise InvalidField(
            field,
            f"unknown provider {shown(provider)} (known: {', '.join(sorted(KNOWN_PROVIDERS))})",
        )
    if provider not in enabled:
        raise InvalidField(field, f"provider {provider!r} is not enabled in this deployment")
    model = descriptor.model_id(model)
    problem = model_id_problem(model)
    if problem is not None:
        raise InvalidField(field, problem)
    if len(_GOOD_MODELS) < _GOOD_MODELS_KEPT:
        _GOOD_MODELS[value] = (provider, model)
    return provider, model


def retarget(request: Request, target: str, enabled: frozenset[str] = KNOWN_PROVIDERS) -> Request:
    """`request` for model `target` (`provider/model`) instead of its own: the same
    messages, system prompt, `max_tokens`, sampling and schema, checked as the target's
    parser checks a line. Raises `InvalidField` saying why the target cannot take it (a
    native line, a content block or schema keyword the target refuses, a disabled
    provider)."""
    if request.native is not None or request.params is None:
        raise InvalidField("model", "a provider-native line can only be sent to its own provider")
    name, model = split_model(target, "fallback", enabled)
    provider = PROVIDERS[name]
    params = request.params
    check_messages(params["messages"], provider.check_message)
    if "temperature" in params:
        provider.check_temperature(params["temperature"])
    if "stop" in params:
        provider.check_stop(params["stop"])
    if request.schema is not None:
        _check_expressible(request.schema, provider, "schema")
    return replace(request, provider=name, model=model)


def _native(
    number: int,
    custom_id: str | None,
    obj: dict[str, Any],
    provider: Provider,
    default_model: str | None,
    enabled: frozenset[str],
) -> Request:
    if provider.name not in enabled:
        raise InvalidField(
            provider.model_field, f"provider {provider.name!r} is not enabled in this deployment"
        )
    model, body = provider.parse_native(obj, _native_context(default_model, enabled))
    request = Request(number, custom_id, provider.name, model, native=body)
    return _with_native_schema(request, provider)


@lru_cache(maxsize=64)
def _native_context(default_model: str | None, enabled: frozenset[str]) -> NativeContext:
    """One per job's default model and enabled providers (made once, not per line)."""
    return NativeContext(default_model, partial(split_model, enabled=enabled))


def _batchline(
    number: int,
    custom_id: str | None,
    obj: dict[str, Any],
    default_model: str | None,
    schemas: SchemaContext,
    enabled: frozenset[str],
) -> Request:
    for key in obj:
        if key not in _BATCHLINE_FIELDS:
            raise InvalidField(key, "unknown field")
    named = _line_model(obj, default_model, enabled)
    provider = PROVIDERS[named[0]] if named is not None else None
    messages = obj.get("messages")
    if messages is None:
        raise InvalidField("messages", "missing")
    check_messages(messages, provider.check_message if provider else _any_message)
    params = _batchline_params(obj, messages, provider)
    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidField("metadata", f"expected an object, got {kind(metadata)}")
    schema, field = _line_schema(obj, schemas)
    if named is None or provider is None:  # "auto": the chosen model's checks come then
        return Request(
            number, custom_id, AUTO, AUTO, params=params, schema=schema, selected_by=AUTO
        )
    if schema is not None:
        _check_expressible(schema, provider, field)
    return Request(number, custom_id, named[0], named[1], params=params, schema=schema)


def _line_model(
    obj: dict[str, Any], default_model: str | None, enabled: frozenset[str]
) -> tuple[str, str] | None:
    """(provider, model id) a batchline line names, or the job's default; None: "auto"."""
    if "model" in obj:
        return None if obj["model"] == AUTO else split_model(obj["model"], enabled=enabled)
    if default_model == AUTO:
        return None
    if default_model:
        return split_model(default_model, "model (job default)", enabled)
    raise InvalidField("model", "missing, and the job has no default model")


def _any_message(_where: str, _message: dict[str, Any]) -> None:
    """A message of a line whose provider is not chosen yet: its own checks come then."""


def _batchline_params(
    obj: dict[str, Any], messages: Any, provider: Provider | None
) -> dict[str, Any]:
    """The provider-neutral request of a batchline line, each field checked (against
    `provider`'s rules too, unless it is None: not chosen yet)."""
    params: dict[str, Any] = {"messages": messages}
    system = obj.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise InvalidField("system", f"expected a string, got {kind(system)}")
        params["system"] = system
    max_tokens = obj.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            if isinstance(max_tokens, float) and abs(max_tokens) >= _BEYOND_64_BITS:
                # orjson reads an integer past 64 bits as a float: show no changed value.
                raise InvalidField(
                    "max_tokens", "expected a positive integer, got a number beyond 64 bits"
                )
            raise InvalidField("max_tokens", f"expected a positive integer, got {max_tokens!r}")
        params["max_tokens"] = max_tokens
    temperature = obj.get("temperature")
    if temperature is not None:
        if provider is not None:
            provider.check_temperature(temperature)
        if (
            not isinstance(temperature, int | float)
            or isinstance(temperature, bool)
            or not math.isfinite(temperature)
            or not 0 <= temperature <= 2
        ):
            raise InvalidField("temperature", f"expected a number from 0 to 2, got {temperature!r}")
        params["temperature"] = temperature
    stop = obj.get("stop")
    if stop is not None:
        if not (isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop)):
            raise InvalidField("stop", "expected a non-empty list of strings")
        if provider is not None:
            provider.check_stop(stop)
        params["stop"] = stop
    return params


def _line_schema(obj: dict[str, Any], schemas: SchemaContext) -> tuple[ResponseSchema | None, str]:
    if "response_schema" in obj and "schema" in obj:
        raise InvalidField("schema", "give either response_schema or schema, not both")
    if "response_schema" in obj:
        try:
            return ResponseSchema.from_line_value(obj["response_schema"]), "response_schema"
        except SchemaError as exc:
            where = f"response_schema.{exc.where}" if exc.where else "response_schema"
            raise InvalidField(where, exc.reason) from None
    if "schema" in obj:
        name = obj["schema"]
        if not isinstance(name, str) or not name:
            raise InvalidField(
                "schema", f"expected the name of a registered schema, got {kind(name)}"
            )
        if schemas.lookup is None:
            raise InvalidField("schema", "no registered schemas are available to this job")
        try:
            return schemas.lookup(name), "schema"
        except SchemaError as exc:
            raise InvalidField("schema", str(exc)) from None
    return schemas.default, "schema (job default)"


def _with_native_schema(request: Request, provider: Provider) -> Request:
    """A native line's own structured-output setting, kept to validate its answer."""
    found = provider.native_schema(request.native or {})
    if found is None or found[0] is None:
        return request
    raw, name = found
    try:
        schema = ResponseSchema.create(raw, name if isinstance(name, str) else None)
    except SchemaError as exc:
        raise InvalidField("schema", f"the line's own schema is unusable: {exc}") from None
    return replace(request, schema=schema)
