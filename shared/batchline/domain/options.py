"""A job's options, from an input object's custom metadata or the API's `options`.

Metadata values are strings (`max_cost_usd: "2.50"`); the API gives JSON values. Every
problem names the option, so a user can fix the upload or the request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import orjson

from batchline.config import prices_override, webhook_allow_insecure_local
from batchline.domain.models import PREFERENCES, JobOptions
from batchline.domain.paths import SCHEMA_NAME_PATTERN
from batchline.domain.schemas import ResponseSchema, SchemaError
from batchline.domain.webhooks import notify_url_problem


class OptionError(ValueError):
    """A job option that cannot be used; names the option and why."""

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"option {option!r}: {reason}")
        self.option = option
        self.reason = reason


class OptionTooLarge(OptionError):
    """An option over its size limit (the API answers 413)."""


LABEL_PREFIX = "label-"
#: The options the API's `options` object takes; any other name is an error.
API_OPTIONS = frozenset(
    {
        "model",
        "labels",
        "schema",
        "response_schema",
        "max_repair_attempts",
        "max_cost_usd",
        "notify_url",
        "max_retries",
        "fallback",
        "max_queue_hours",
        "candidates",
        "prefer",
    }
)
#: The most models a job's `fallback` may name.
MAX_FALLBACK_MODELS = 8
#: A label's key: what Firestore, Cloud Logging and GCS metadata all take as a name
#: (`__x__` is reserved by Firestore, an empty name by everyone).
LABEL_KEY_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
MAX_LABELS = 64
MAX_LABEL_VALUE_CHARS = 256
#: The most models `candidates` may list.
MAX_CANDIDATES = 16
#: A job's inline default schema is stored on the job's record (1 MiB in all).
MAX_RESPONSE_SCHEMA_BYTES = 256 * 1024


def from_metadata(metadata: Mapping[str, str]) -> JobOptions:
    """Options from an object's custom metadata: `model`, `schema` (a registered name),
    `max_repair_attempts`, `max_cost_usd`, `notify_url`, `max_retries`, `fallback` (models
    separated by commas), `max_queue_hours`, `candidates` (models separated by commas),
    `prefer`, and `label-<key>` labels."""
    labels = {k[len(LABEL_PREFIX) :]: v for k, v in metadata.items() if k.startswith(LABEL_PREFIX)}
    for key in labels:
        _label_key(key, f"{LABEL_PREFIX}{key}")
    _labels(labels, "labels")
    return JobOptions(
        model=_model(metadata.get("model") or None),
        labels=labels,
        schema=_schema_name(metadata.get("schema") or None),
        max_repair_attempts=_attempts(metadata.get("max_repair_attempts")),
        max_cost_usd=_budget(metadata.get("max_cost_usd")),
        notify_url=_notify_url(metadata.get("notify_url") or None),
        max_retries=_retries(metadata.get("max_retries")),
        fallback=_fallback(_comma_list(metadata.get("fallback"))),
        max_queue_hours=_queue_hours(metadata.get("max_queue_hours")),
        candidates=_candidates(_comma_list(metadata.get("candidates"))),
        prefer=_prefer(metadata.get("prefer") or None),
    )


def from_api(options: Mapping[str, Any]) -> JobOptions:
    """Options from the API body's `options` object (JSON values)."""
    for name in options:
        if name not in API_OPTIONS:
            raise OptionError(name, f"unknown option (known: {', '.join(sorted(API_OPTIONS))})")
    model = options.get("model")
    if model is not None and not isinstance(model, str):
        raise OptionError("model", "expected a string like 'openai/gpt-4.1-mini'")
    model = _model(model)
    labels = options.get("labels")
    if labels is None:
        labels = {}
    if not isinstance(labels, dict):
        raise OptionError("labels", "expected an object of strings")
    _labels(labels, "labels")
    schema = options.get("schema")
    if schema is not None and not isinstance(schema, str):
        raise OptionError("schema", "expected the name of a registered schema")
    inline = options.get("response_schema")
    if inline is not None and len(orjson.dumps(inline)) > MAX_RESPONSE_SCHEMA_BYTES:
        raise OptionTooLarge(
            "response_schema",
            f"over {MAX_RESPONSE_SCHEMA_BYTES} bytes; register a large schema with "
            "`batchline schema push` and name it in `schema`",
        )
    if inline is not None:
        if schema is not None:
            raise OptionError("schema", "give either schema or response_schema, not both")
        try:
            ResponseSchema.from_line_value(inline)
        except SchemaError as exc:
            raise OptionError("response_schema", str(exc)) from None
    return JobOptions(
        model=model,
        labels=dict(labels),
        schema=_schema_name(schema),
        response_schema=inline,
        max_repair_attempts=_attempts(options.get("max_repair_attempts")),
        max_cost_usd=_budget(options.get("max_cost_usd")),
        notify_url=_notify_url(options.get("notify_url")),
        max_retries=_retries(options.get("max_retries")),
        fallback=_fallback(options.get("fallback")),
        max_queue_hours=_queue_hours(options.get("max_queue_hours")),
        candidates=_candidates(options.get("candidates")),
        prefer=_prefer(options.get("prefer")),
    )


def default_schema_of(options: JobOptions) -> tuple[str | None, ResponseSchema | None]:
    """(registered name, inline schema) of the job's default schema, at most one set."""
    if options.response_schema is not None:
        return None, ResponseSchema.from_line_value(options.response_schema)
    return options.schema, None


def _labels(labels: Mapping[str, Any], option: str) -> None:
    """Label keys and values that every store takes, in bounded number and size."""
    if len(labels) > MAX_LABELS:
        raise OptionTooLarge(option, f"{len(labels)} labels; at most {MAX_LABELS}")
    for key, value in labels.items():
        _label_key(key, f"{option}.{key}" if option == "labels" else option)
        if not isinstance(value, str):
            raise OptionError(f"labels.{key}", "expected a string value")
        if len(value) > MAX_LABEL_VALUE_CHARS:
            raise OptionTooLarge(f"labels.{key}", f"longer than {MAX_LABEL_VALUE_CHARS} characters")


def _label_key(key: Any, option: str) -> None:
    if not isinstance(key, str) or not re.fullmatch(LABEL_KEY_PATTERN, key):
        shown = key if isinstance(key, str) and len(key) <= 80 else f"{str(key)[:80]}..."
        raise OptionError(option, f"label key {shown!r} is not a label name ({LABEL_KEY_PATTERN})")


def _model(value: str | None) -> str | None:
    if value is None:
        return None
    # Here, not at the top: the request parser is the larger import, and only options
    # that name a model need it (the api's cold start answering reads does not).
    from batchline.domain.requests import model_problem

    problem = model_problem(value)
    if problem is not None:
        raise OptionError("model", problem)
    return value


def _candidates(value: Any) -> list[str] | None:
    """`provider/model` names the price table knows (their costs and limits rank them)."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise OptionError("candidates", "expected a non-empty list of 'provider/model' names")
    if len(value) > MAX_CANDIDATES:
        raise OptionError("candidates", f"{len(value)} models; at most {MAX_CANDIDATES}")
    # Here, not at the top: only jobs that name candidates need the parser and the table.
    from batchline.domain.pricing import load_prices, price_for
    from batchline.domain.providers.base import InvalidField
    from batchline.domain.requests import AUTO, split_model

    prices = load_prices(prices_override())
    for name in value:
        if name == AUTO:
            raise OptionError("candidates", "'auto' is not a model to choose")
        try:
            provider, model = split_model(name, "candidates")
        except InvalidField as exc:
            raise OptionError("candidates", f"{name!r}: {exc.reason}") from None
        if price_for(prices, provider, model) is None:
            raise OptionError(
                "candidates",
                f"unknown model {name!r}: not in the price table, so its cost and limits "
                "are unknown (add it to BATCHLINE_PRICES)",
            )
    if len(set(value)) < len(value):
        raise OptionError("candidates", "a model is listed twice")
    return list(value)


def _prefer(value: Any) -> str | None:
    if value is None:
        return None
    if value not in PREFERENCES:
        raise OptionError(
            "prefer", f"expected one of {', '.join(map(repr, PREFERENCES))}, got {value!r}"
        )
    return str(value)


def _notify_url(value: Any) -> str | None:
    if value is None:
        return None
    problem = notify_url_problem(value, allow_insecure_local=webhook_allow_insecure_local())
    if problem is not None:
        raise OptionError("notify_url", problem)
    return str(value)


def _schema_name(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(SCHEMA_NAME_PATTERN, value):
        raise OptionError("schema", f"{value!r} is not a schema name ({SCHEMA_NAME_PATTERN})")
    return value


def _attempts(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 5:
        raise OptionError(
            "max_repair_attempts", f"expected a whole number from 0 to 5, got {value!r}"
        )
    return value


def _budget(value: Any) -> float | None:
    number = _number(value, "max_cost_usd", "a number of dollars")
    if number is not None and number < 0:
        raise OptionError("max_cost_usd", f"expected a non-negative number, got {value!r}")
    return number


def _number(value: Any, option: str, what: str) -> float | None:
    """A finite number option (a string of one, from metadata); None when unset."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise OptionError(option, f"expected {what}, got {value!r}") from None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise OptionError(option, f"expected {what}, got {value!r}")
    return float(value)


def _retries(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 5:
        raise OptionError("max_retries", f"expected a whole number from 0 to 5, got {value!r}")
    return value


def _comma_list(value: str | None) -> list[str] | None:
    if value is None or not value.strip():
        return None
    return [part.strip() for part in value.split(",")]


def _fallback(value: Any) -> tuple[str, ...]:
    """The job's failover chain: `provider/model` names, each checked as a line's model."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise OptionError("fallback", "expected a list of models like 'anthropic/claude-haiku-4-5'")
    if len(value) > MAX_FALLBACK_MODELS:
        raise OptionError("fallback", f"{len(value)} models; at most {MAX_FALLBACK_MODELS}")
    from batchline.domain.providers.base import InvalidField
    from batchline.domain.requests import split_model

    names: list[str] = []
    for k, name in enumerate(value):
        try:
            provider, model = split_model(name, f"fallback[{k}]")
        except InvalidField as exc:
            raise OptionError(exc.field, exc.reason) from None
        names.append(f"{provider}/{model}")
    return tuple(dict.fromkeys(names))


def _queue_hours(value: Any) -> float | None:
    hours = _number(value, "max_queue_hours", "a number of hours")
    if hours is not None and not 0 < hours <= 72:
        raise OptionError(
            "max_queue_hours", f"expected a number of hours above 0, at most 72, got {value!r}"
        )
    return hours
