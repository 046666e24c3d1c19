"""Strict checks against the `anthropic` SDK's own types, for the emulator and the adapter.

The SDK is lenient on purpose (unknown fields are kept, missing optional ones default to
None, request TypedDicts are not checked at run time). These checks are not:

- `model_problems(MessageBatch, data)`: `data` validates as the SDK model, and neither it
  nor any model inside it has a field the SDK does not know or lacks one the SDK has
  (Anthropic sends optional fields as null; so must the emulator).
- `params_problems(data)`: `data` is a `batch_create_params.Request` (`custom_id` and
  `MessageCreateParamsNonStreaming`): every key known, every required key present, every
  value of the declared type, through nested TypedDicts, unions, literals and lists.
"""

from __future__ import annotations

import collections.abc
import datetime as dt
import types
import typing
from typing import Any, Literal, NotRequired, Required, Union, get_args, get_origin, get_type_hints

import pydantic
from anthropic.types.messages import batch_create_params
from typing_extensions import is_typeddict

# --------------------------------------------------------------------------- responses


def model_problems(cls: type[pydantic.BaseModel], data: Any) -> list[str]:
    """Why `data` is not exactly an instance of the SDK model `cls` (empty: it is)."""
    try:
        obj = cls.model_validate(data)
    except pydantic.ValidationError as exc:
        return [f"does not validate as {cls.__name__}: {exc}"]
    problems: list[str] = []
    _walk_model(obj, cls.__name__, problems)
    return problems


def _walk_model(value: Any, path: str, problems: list[str]) -> None:
    if isinstance(value, pydantic.BaseModel):
        for extra in sorted(value.model_extra or {}):
            problems.append(f"{path}.{extra}: not a field of {type(value).__name__}")
        for missing in sorted(set(type(value).model_fields) - value.model_fields_set):
            problems.append(f"{path}.{missing}: missing (send null rather than leave it out)")
        for name in type(value).model_fields:
            _walk_model(getattr(value, name), f"{path}.{name}", problems)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk_model(item, f"{path}[{i}]", problems)
    elif isinstance(value, dict):
        for key, item in value.items():
            _walk_model(item, f"{path}.{key}", problems)


# --------------------------------------------------------------------------- requests

_LIST_ORIGINS = (
    list,
    tuple,
    collections.abc.Iterable,
    collections.abc.Sequence,
    collections.abc.Collection,
)


def params_problems(data: Any, tp: Any = batch_create_params.Request) -> list[str]:
    """Why `data` does not match the TypedDict-based type `tp` (empty: it does)."""
    return _check(tp, data, "request")


def _check(tp: Any, value: Any, path: str) -> list[str]:
    origin, args = get_origin(tp), get_args(tp)
    if origin is typing.Annotated:
        return _check(args[0], value, path)
    if origin in (Required, NotRequired):
        return _check(args[0], value, path)
    if tp is Any or tp is object:
        return []
    if tp is None or tp is type(None):
        return [] if value is None else [f"{path}: expected null, got {value!r:.60}"]
    if origin in (Union, types.UnionType):
        return _check_union(args, value, path)
    if origin is Literal:
        return [] if value in args else [f"{path}: {value!r:.60} is not one of {list(args)}"]
    if is_typeddict(tp):
        return _check_typeddict(tp, value, path)
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        item_type = args[1] if len(args) == 2 else Any
        return [p for k, v in value.items() for p in _check(item_type, v, f"{path}.{k}")]
    if origin in _LIST_ORIGINS or (origin is not None and "Sequence" in origin.__name__):
        if isinstance(value, str | bytes) or not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        item_type = args[0] if args else Any
        return [p for i, v in enumerate(value) for p in _check(item_type, v, f"{path}[{i}]")]
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{path}: expected a boolean"]
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected an integer, got {value!r:.60}"]
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected a number, got {value!r:.60}"]
    if tp is str:
        return [] if isinstance(value, str) else [f"{path}: expected a string, got {value!r:.60}"]
    if tp in (dt.datetime, dt.date):
        return [] if isinstance(value, str) else [f"{path}: expected a date string"]
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        # A response model taken back as input (e.g. a ContentBlock in a message).
        try:
            obj = tp.model_validate(value)
        except pydantic.ValidationError as exc:
            return [f"{path}: not a {tp.__name__}: {str(exc).splitlines()[0]}"]
        return [f"{path}.{k}: not a field of {tp.__name__}" for k in obj.model_extra or {}]
    raise AssertionError(f"{path}: the checker does not know the type {tp!r}")


def _check_union(args: tuple[Any, ...], value: Any, path: str) -> list[str]:
    best: list[str] | None = None
    for branch in args:
        problems = _check(branch, value, path)
        if not problems:
            return []
        if best is None or len(problems) < len(best):
            best = problems
    kind = value.get("type") if isinstance(value, dict) else None
    head = f"{path}: matches no branch of the union" + (f" (type {kind!r})" if kind else "")
    return [head, *(best or [])[:3]]


def _check_typeddict(tp: Any, value: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object, got {type(value).__name__}"]
    hints = get_type_hints(tp, include_extras=True)
    problems = [f"{path}.{key}: not a field of {tp.__name__}" for key in value if key not in hints]
    # The SDK's modules postpone annotations, so `Required[...]` only shows in the hints.
    required = {k for k, h in hints.items() if get_origin(h) is Required}
    required |= set(tp.__required_keys__) - {
        k for k, h in hints.items() if get_origin(h) is NotRequired
    }
    for key in sorted(required):
        if key not in value:
            problems.append(f"{path}.{key}: required by {tp.__name__}")
    for key, item in value.items():
        if key in hints:
            problems.extend(_check(hints[key], item, f"{path}.{key}"))
    return problems
