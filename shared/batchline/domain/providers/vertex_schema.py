"""Gemini's `responseSchema` (Vertex AI's `Schema`, an OpenAPI 3.0 subset) as JSON Schema.

A Vertex native line may ask for structured output with `responseSchema` instead of
`responseJsonSchema`; its answer is validated like any other, against this translation.
Field names come in JSON (`minItems`) or proto (`min_items`) spelling; types in any case.
A field the `Schema` message does not have is an error, as Vertex would refuse it.
"""

from __future__ import annotations

from typing import Any

from batchline.domain.schemas import SchemaError

_TYPES = {
    "STRING": "string",
    "NUMBER": "number",
    "INTEGER": "integer",
    "BOOLEAN": "boolean",
    "ARRAY": "array",
    "OBJECT": "object",
}
#: Proto spellings of the fields whose JSON spelling differs.
_JSON_NAMES = {
    "type_": "type",
    "format_": "format",
    "min_items": "minItems",
    "max_items": "maxItems",
    "min_length": "minLength",
    "max_length": "maxLength",
    "min_properties": "minProperties",
    "max_properties": "maxProperties",
    "property_ordering": "propertyOrdering",
    "any_of": "anyOf",
    "additional_properties": "additionalProperties",
}
#: Fields that mean the same in JSON Schema.
_SAME = frozenset(
    {"title", "description", "default", "enum", "required", "minimum", "maximum", "pattern"}
)
#: int64 fields, which the REST encoding may send as strings.
_COUNTS = frozenset(
    {"minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"}
)
#: Fields that only guide generation (and Gemini's own formats: float, int32, enum, ...).
_GUIDANCE = frozenset({"example", "propertyOrdering"})
_JSON_SCHEMA_FORMATS = frozenset({"date-time", "date", "time", "email", "uri", "uuid"})


def as_json_schema(schema: Any, where: str = "responseSchema") -> dict[str, Any]:
    """The JSON Schema that `schema` (a Vertex `Schema`) describes. Raises SchemaError
    naming the place of anything that is not a `Schema`."""
    if not isinstance(schema, dict):
        raise SchemaError(where, f"expected an object, got {type(schema).__name__}")
    out: dict[str, Any] = {}
    for raw_key, value in schema.items():
        key = _JSON_NAMES.get(raw_key, raw_key)
        at = f"{where}.{raw_key}"
        if key == "type":
            kind = str(value).upper()
            if kind != "TYPE_UNSPECIFIED":
                if kind not in _TYPES:
                    raise SchemaError(at, f"expected one of {sorted(_TYPES)}, got {value!r}")
                out["type"] = _TYPES[kind]
        elif key == "format":
            if value in _JSON_SCHEMA_FORMATS:
                out["format"] = value
        elif key in ("properties", "defs"):
            if not isinstance(value, dict):
                raise SchemaError(at, f"expected an object, got {type(value).__name__}")
            converted = {name: as_json_schema(sub, f"{at}.{name}") for name, sub in value.items()}
            out["$defs" if key == "defs" else key] = converted
        elif key == "items":
            out[key] = as_json_schema(value, at)
        elif key == "anyOf":
            if not isinstance(value, list):
                raise SchemaError(at, f"expected a list, got {type(value).__name__}")
            out[key] = [as_json_schema(sub, f"{at}[{i}]") for i, sub in enumerate(value)]
        elif key == "additionalProperties":
            out[key] = value if isinstance(value, bool) else as_json_schema(value, at)
        elif key == "ref":
            out["$ref"] = str(value).replace("#/defs/", "#/$defs/")
        elif key in _COUNTS:
            out[key] = int(value) if isinstance(value, str) and value.isdigit() else value
        elif key in _SAME:
            out[key] = value
        elif key not in _GUIDANCE and key != "nullable":
            raise SchemaError(at, "not a field of Vertex's Schema")
    if schema.get("nullable") is True:
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        if "type" not in out and isinstance(out.get("anyOf"), list):
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out
