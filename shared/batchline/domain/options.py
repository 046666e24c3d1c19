"""A job's options, from an input object's custom metadata or the API's `options`.

Metadata values are strings (`max_cost_usd: "2.50"`); the API gives JSON values. Every
problem names the option, so a user can fix the upload or the request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from batchline.domain.models import JobOptions
from batchline.domain.paths import SCHEMA_NAME_PATTERN
from batchline.domain.schemas import ResponseSchema, SchemaError


class OptionError(ValueError):
    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"option {option!r}: {reason}")
        self.option = option
        self.reason = reason


LABEL_PREFIX = "label-"


def from_metadata(metadata: Mapping[str, str]) -> JobOptions:
    """Options from an object's custom metadata: `model`, `schema` (a registered name),
    `max_repair_attempts`, `max_cost_usd`, and `label-<key>` labels."""
    labels = {k[len(LABEL_PREFIX) :]: v for k, v in metadata.items() if k.startswith(LABEL_PREFIX)}
    return JobOptions(
        model=metadata.get("model") or None,
        labels=labels,
        schema=_schema_name(metadata.get("schema") or None),
        max_repair_attempts=_attempts(metadata.get("max_repair_attempts")),
        max_cost_usd=_budget(metadata.get("max_cost_usd")),
    )


def from_api(options: Mapping[str, Any]) -> JobOptions:
    """Options from the API body's `options` object (JSON values)."""
    model = options.get("model")
    if model is not None and not isinstance(model, str):
        raise OptionError("model", "expected a string like 'openai/gpt-4.1-mini'")
    labels = options.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise OptionError("labels", "expected an object of strings")
    schema = options.get("schema")
    if schema is not None and not isinstance(schema, str):
        raise OptionError("schema", "expected the name of a registered schema")
    inline = options.get("response_schema")
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
    )


def default_schema_of(options: JobOptions) -> tuple[str | None, ResponseSchema | None]:
    """(registered name, inline schema) of the job's default schema, at most one set."""
    if options.response_schema is not None:
        return None, ResponseSchema.from_line_value(options.response_schema)
    return options.schema, None


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
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise OptionError(
                "max_cost_usd", f"expected a number of dollars, got {value!r}"
            ) from None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise OptionError("max_cost_usd", f"expected a non-negative number, got {value!r}")
    return float(value)
