"""Vertex native lines with Gemini's own `responseSchema`: translated to JSON Schema, so
their answers are validated like every other structured answer."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batchline.domain.providers import vertex
from batchline.domain.providers.vertex_schema import as_json_schema
from batchline.domain.requests import InvalidLine, Request, SchemaContext, parse_line
from batchline.domain.schemas import SchemaError, Validator

#: Google's spelling: upper-case types, nullable, proto names, int64 counts as strings.
RECIPE = {
    "type": "OBJECT",
    "properties": {
        "name": {"type": "STRING", "description": "the dish"},
        "servings": {"type": "INTEGER", "format": "int32", "minimum": 1},
        "tags": {"type": "ARRAY", "items": {"type": "string"}, "max_items": "3"},
        "course": {"type": "STRING", "format": "enum", "enum": ["main", "dessert"]},
        "note": {"type": "STRING", "nullable": True},
    },
    "required": ["name", "servings"],
    "propertyOrdering": ["name", "servings", "tags", "course", "note"],
}


def test_the_translation_keeps_the_meaning() -> None:
    assert as_json_schema(RECIPE) == {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "the dish"},
            "servings": {"type": "integer", "minimum": 1},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "course": {"type": "string", "enum": ["main", "dessert"]},
            "note": {"type": ["string", "null"]},
        },
        "required": ["name", "servings"],
    }
    nullable_enum = as_json_schema({"type": "STRING", "enum": ["a"], "nullable": True})
    assert nullable_enum == {"type": ["string", "null"], "enum": ["a", None]}
    refs = as_json_schema({"defs": {"N": {"type": "NUMBER"}}, "ref": "#/defs/N"})
    assert refs == {"$defs": {"N": {"type": "number"}}, "$ref": "#/$defs/N"}


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        (
            {"type": "OBJECT", "properties": {"a": {"type": "TEXT"}}},
            "responseSchema.properties.a.type",
        ),
        ({"type": "OBJECT", "propertys": {}}, "responseSchema.propertys"),
        ({"type": "ARRAY", "items": [{"type": "STRING"}]}, "responseSchema.items"),
    ],
)
def test_what_is_not_a_vertex_schema_is_named(schema: dict[str, Any], where: str) -> None:
    with pytest.raises(SchemaError) as caught:
        as_json_schema(schema)
    assert caught.value.where == where


def native(config: dict[str, Any]) -> Request | InvalidLine:
    request = {
        "model": "gemini-2.5-flash",
        "contents": [{"role": "user", "parts": [{"text": "A recipe, please."}]}],
        "generationConfig": config,
    }
    return parse_line(
        1,
        orjson.dumps({"key": "r1", "request": request}),
        default_model=None,
        max_line_bytes=1 << 20,
        schemas=SchemaContext(),
    )


def test_a_native_line_with_a_response_schema_is_validated_and_sent_untouched() -> None:
    config = {"responseMimeType": "application/json", "responseSchema": RECIPE}
    got = native(config)
    assert isinstance(got, Request) and got.schema is not None
    assert got.schema.schema == as_json_schema(RECIPE)
    sent = orjson.loads(vertex.encode(got))["request"]
    assert sent["generationConfig"] == config  # Google's own spelling goes to Google
    validator = Validator(got.schema)
    assert validator.check('{"name": "Tarte", "servings": 4, "note": null}').violation is None
    bad = validator.check('{"name": "Tarte", "servings": 0}').violation
    assert bad is not None and bad.path == "$.servings"


def test_enum_mode_and_plain_text_answers_are_not_validated_as_json() -> None:
    enum_mode = native(
        {"responseMimeType": "text/x.enum", "responseSchema": {"type": "STRING", "enum": ["a"]}}
    )
    assert isinstance(enum_mode, Request) and enum_mode.schema is None
    plain = native({"responseSchema": RECIPE})  # no JSON mime type: Vertex refuses it
    assert isinstance(plain, Request) and plain.schema is None


def test_a_response_schema_vertex_would_refuse_makes_the_line_invalid() -> None:
    got = native({"responseMimeType": "application/json", "responseSchema": {"type": "TUPLE"}})
    assert isinstance(got, InvalidLine)
    assert got.field == "request.generationConfig.responseSchema.type"
    assert "TUPLE" in got.reason
