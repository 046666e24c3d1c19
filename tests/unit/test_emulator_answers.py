"""The emulators' structured-answer generator (`batchline_emulators._answers`),
checked with the `jsonschema` library, which the generator itself does not use."""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
import urllib.parse
import uuid
from typing import Annotated, Any, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from batchline_emulators._answers import (
    INVALID_KINDS,
    InvalidAnswers,
    from_google_schema,
    generate,
    pattern_string,
    structured_answer,
)

FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
SEEDS = [f"seed-{i}" for i in range(12)]


def errors(value: Any, schema: Any, cls: Any = jsonschema.Draft202012Validator) -> list[str]:
    return [
        f"{list(e.absolute_path)}: {e.message}"
        for e in cls(schema, format_checker=FORMATS).iter_errors(value)
    ]


def kind_of(text: str, schema: Any) -> str:
    """How an answer's text fares against `schema`: valid, not_json, missing_field (a
    `required` error anywhere), wrong_type (a `type` error anywhere) or other."""
    try:
        value = json.loads(text)
    except ValueError:
        return "not_json"
    found: set[str] = set()
    stack = list(jsonschema.Draft202012Validator(schema).iter_errors(value))
    while stack:
        error = stack.pop()
        found.add(str(error.validator))
        stack.extend(error.context or ())
    if not found:
        return "valid"
    return next(
        (k for v, k in (("required", "missing_field"), ("type", "wrong_type")) if v in found),
        "other",
    )


# --------------------------------------------------------------------------- schemas

DEFS = {
    "Point": {
        "type": "object",
        "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
        "required": ["x", "y"],
        "additionalProperties": False,
    }
}

SCHEMAS: dict[str, Any] = {
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "null": {"type": "null"},
    "type list": {"type": ["string", "null"]},
    "null first": {"type": ["null", "integer"]},
    "enum": {"enum": ["low", "medium", "high"]},
    "mixed enum": {"enum": [1, "two", None, 3.5]},
    "typed enum": {"type": "integer", "enum": ["no", 2, 3]},
    "const": {"const": {"fixed": [1, 2]}},
    "empty schema": {},
    "true schema": True,
    "object": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 3, "maxLength": 40},
            "count": {"type": "integer", "minimum": 0},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "done": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        },
        "required": ["title", "count"],
        "additionalProperties": False,
    },
    "required not in properties": {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a", "b"],
        "additionalProperties": {"type": "integer"},
    },
    "map": {"type": "object", "additionalProperties": {"type": "number", "minimum": 5}},
    "min and max properties": {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}, "c": {"type": "string"}},
        "required": ["a"],
        "maxProperties": 2,
    },
    "min properties": {"type": "object", "minProperties": 3},
    "untyped object": {"properties": {"a": {"const": 1}}, "required": ["a"]},
    "prefixItems": {
        "type": "array",
        "prefixItems": [{"type": "string"}, {"type": "integer"}, {"type": "boolean"}],
        "items": False,
    },
    "prefixItems then items": {
        "type": "array",
        "prefixItems": [{"const": "head"}],
        "items": {"type": "integer"},
        "minItems": 4,
    },
    "bounded array": {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 3},
    "empty array": {"type": "array", "maxItems": 0},
    "unique items": {
        "type": "array",
        "items": {"enum": ["a", "b", "c", "d"]},
        "minItems": 3,
        "uniqueItems": True,
    },
    "integer bounds": {"type": "integer", "minimum": -5, "maximum": -3},
    "exclusive integer": {"type": "integer", "exclusiveMinimum": 9, "exclusiveMaximum": 11},
    "fractional integer bounds": {"type": "integer", "minimum": 2.5, "maximum": 3.5},
    "only a maximum": {"type": "integer", "maximum": -1000},
    "integer multipleOf": {"type": "integer", "multipleOf": 7, "minimum": 20, "maximum": 40},
    "huge multipleOf": {"type": "integer", "multipleOf": 1000},
    "integer half multipleOf": {"type": "integer", "multipleOf": 1.5},
    "cents": {"type": "number", "multipleOf": 0.01, "minimum": 0, "maximum": 1},
    "quarters": {"type": "number", "multipleOf": 0.25, "exclusiveMinimum": 0},
    "narrow number": {"type": "number", "minimum": 1.001, "maximum": 1.002},
    "number bounds": {"type": "number", "minimum": -1e6, "maximum": -999999.5},
    "short string": {"type": "string", "maxLength": 2},
    "empty string": {"type": "string", "maxLength": 0},
    "long string": {"type": "string", "minLength": 50},
    "date": {"type": "string", "format": "date"},
    "date-time": {"type": "string", "format": "date-time"},
    "time": {"type": "string", "format": "time"},
    "email": {"type": "string", "format": "email"},
    "uri": {"type": "string", "format": "uri"},
    "uuid": {"type": "string", "format": "uuid"},
    "ipv4": {"type": "string", "format": "ipv4"},
    "unknown format": {"type": "string", "format": "shoe-size", "minLength": 1},
    "pattern": {"type": "string", "pattern": r"^[A-Z]{2}-\d{3,5}$"},
    "pattern and length": {"type": "string", "pattern": r"^[a-z]+$", "minLength": 12},
    "unanchored pattern": {"type": "string", "pattern": r"ab+c"},
    "pattern alternation": {"type": "string", "pattern": r"^(red|green|blue)(-(dark|light))?$"},
    "$defs ref": {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/Point"}, "b": {"$ref": "#/$defs/Point"}},
        "required": ["a"],
        "$defs": DEFS,
    },
    "definitions ref": {
        "type": "array",
        "items": {"$ref": "#/definitions/Point"},
        "definitions": DEFS,
    },
    "ref with siblings": {
        "$defs": {"Level": {"type": "integer", "minimum": 0, "maximum": 100}},
        "type": "object",
        "properties": {"level": {"$ref": "#/$defs/Level", "maximum": 3}},
        "required": ["level"],
    },
    "anyOf with null": {"anyOf": [{"type": "null"}, {"type": "string", "format": "date"}]},
    "anyOf": {"anyOf": [{"type": "integer", "minimum": 10}, {"type": "string"}]},
    "oneOf overlapping": {"oneOf": [{"type": "number"}, {"type": "integer"}]},
    "oneOf discriminated": {
        "oneOf": [
            {
                "type": "object",
                "properties": {"kind": {"const": "a"}, "n": {"type": "integer"}},
                "required": ["kind", "n"],
            },
            {
                "type": "object",
                "properties": {"kind": {"const": "b"}, "s": {"type": "string"}},
                "required": ["kind", "s"],
            },
        ]
    },
    "allOf": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"properties": {"b": {"type": "integer", "minimum": 3}}, "required": ["b"]},
            {"properties": {"b": {"maximum": 4}}},
        ]
    },
    "default only": {"default": {"answer": 42}},
    "nullable (OpenAPI)": {"type": "string", "nullable": True, "enum": ["x", "y"]},
    "recursive": {
        "$defs": {
            "Tree": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Tree"}},
                    "parent": {"anyOf": [{"$ref": "#/$defs/Tree"}, {"type": "null"}]},
                },
                "required": ["value", "children", "parent"],
            }
        },
        "$ref": "#/$defs/Tree",
    },
    "recursive root": {
        "type": "object",
        "properties": {"next": {"$ref": "#"}, "v": {"type": "integer"}},
        "required": ["v"],
    },
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_generated_values_are_valid(name: str) -> None:
    schema = SCHEMAS[name]
    for seed in SEEDS:
        value = generate(schema, seed)
        assert errors(value, schema) == [], (name, seed, value)


def test_draft4_exclusive_booleans() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": 0, "maximum": 1, "exclusiveMinimum": True},
            "b": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": True},
        },
        "required": ["a", "b"],
    }
    for seed in SEEDS:
        value = generate(schema, seed)
        assert errors(value, schema, jsonschema.Draft4Validator) == [], value
        assert value["a"] == 1 and 0 <= value["b"] < 1


def test_formats_are_well_formed() -> None:
    for seed in SEEDS:
        dt.date.fromisoformat(generate(SCHEMAS["date"], seed))
        assert generate(SCHEMAS["date-time"], seed).endswith("Z")
        dt.datetime.fromisoformat(generate(SCHEMAS["date-time"], seed).replace("Z", "+00:00"))
        dt.time.fromisoformat(generate(SCHEMAS["time"], seed).replace("Z", "+00:00"))
        uri = urllib.parse.urlsplit(generate(SCHEMAS["uri"], seed))
        assert uri.scheme == "https" and uri.netloc and uri.path
        assert uuid.UUID(generate(SCHEMAS["uuid"], seed)).version == 4
        local, _, domain = generate(SCHEMAS["email"], seed).partition("@")
        assert local and "." in domain


def test_every_listed_property_is_emitted_in_order() -> None:
    schema = SCHEMAS["object"]
    value = generate(schema, "x")
    assert list(value) == ["title", "count", "ratio", "done", "tags"]
    ordered = {**schema, "propertyOrdering": ["tags", "count"]}
    assert list(generate(ordered, "x"))[:2] == ["tags", "count"]


def test_recursion_stays_small() -> None:
    value = generate(SCHEMAS["recursive"], "x")
    assert value["children"] == [] and value["parent"] is None
    assert len(json.dumps(generate(SCHEMAS["recursive root"], "x"))) < 200


def test_values_are_deterministic_and_vary_with_the_seed() -> None:
    schema = SCHEMAS["object"]
    assert generate(schema, "same") == generate(schema, "same")
    values = [json.dumps(generate(schema, seed)) for seed in SEEDS]
    assert len(set(values)) == len(SEEDS)
    members = {generate(SCHEMAS["enum"], seed) for seed in SEEDS}
    assert members == {"low", "medium", "high"}
    assert len({generate(SCHEMAS["boolean"], seed) for seed in SEEDS}) == 2


@pytest.mark.parametrize(
    "pattern",
    [
        r"^[A-Z]{3}-\d{4}$",
        r"^(foo|bar)+baz?$",
        r"^\S+@\S+\.com$",
        r"^[\w.-]+$",
        r"^[^aeiou\d]{5}$",
        r"^\d{1,3}(\.\d{1,3}){3}$",
        r"^(?:[01]\d|2[0-3]):[0-5]\d$",
        r"^(?P<word>[a-z]+)_\x41\u0042$",
        r"^[+-]?\d+(\.\d+)?([eE][+-]?\d+)?$",
        r"colou?r",
        r"^\s*\[[^\]]+\]\s*$",
        r"^a{2,}b{0,1}c*$",
    ],
)
def test_patterns(pattern: str) -> None:
    for seed in SEEDS[:4]:
        text = pattern_string(pattern, seed)
        assert text is not None and re.search(pattern, text), (pattern, text)


def test_pattern_limits_are_reported() -> None:
    assert pattern_string(r"^(?=a)a$", "s") is None  # lookahead
    assert pattern_string(r"^(a)\1$", "s") is None  # backreference
    assert pattern_string(r"^\p{L}+$", "s") is None  # Unicode property
    assert pattern_string(r"^ab$", "s", min_length=3) is None  # cannot fit the length
    assert pattern_string(r"[", "s") is None  # not a regular expression
    # The generator still answers (best effort): a string, not necessarily matching.
    assert isinstance(generate({"type": "string", "pattern": r"^(?=x)x$"}, "s"), str)


# --------------------------------------------------------------------------- pydantic


class Color(enum.StrEnum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    street: str
    city: str
    postcode: Annotated[str, Field(pattern=r"^\d{5}(-\d{4})?$")]


class LineItem(BaseModel):
    sku: Annotated[str, Field(min_length=4, max_length=12)]
    quantity: Annotated[int, Field(ge=1, le=99)]
    unit_price: Annotated[float, Field(gt=0, lt=1000, multiple_of=0.01)]


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: Annotated[int, Field(ge=0, le=9)]


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Invoice(BaseModel):
    number: str
    issued: dt.date
    due: dt.datetime | None = None
    color: Color
    priority: Priority = Priority.LOW
    status: Literal["draft", "sent", "paid"]
    items: Annotated[list[LineItem], Field(min_length=1, max_length=5)]
    billing: Address
    shipping: Address | None = None
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    totals: dict[str, float] = {}
    notes: list[str] = []
    reference: uuid.UUID
    discount: Annotated[float, Field(ge=0, le=0.5)] = 0


class Comment(BaseModel):
    author: str
    text: str
    replies: list[Comment] = []
    parent: Comment | None = None


class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    score: Annotated[float, Field(ge=-1, le=1)]
    keywords: Annotated[list[str], Field(max_length=3)]


@pytest.mark.parametrize("model", [Invoice, Comment, Sentiment, LineItem, Address])
def test_pydantic_schemas(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    for seed in SEEDS:
        value = generate(schema, seed)
        assert errors(value, schema) == [], (model.__name__, seed, value)
        model.model_validate(value)  # and pydantic takes it back


def test_pydantic_values_vary() -> None:
    schema = Invoice.model_json_schema()
    values = [generate(schema, seed) for seed in SEEDS]
    assert len({v["color"] for v in values}) > 1
    assert len({v["status"] for v in values}) > 1
    assert all(v["shipping"] is not None for v in values)  # first non-null anyOf branch
    assert {v["pet"]["kind"] for v in values} == {"cat"}  # first oneOf branch


# --------------------------------------------------------------------------- Google


GOOGLE_SCHEMA = {
    "type": "OBJECT",
    "properties": {
        "title": {"type": "STRING", "description": "a title"},
        "rating": {"type": "INTEGER", "minimum": 1, "maximum": 5, "format": "int32"},
        "score": {"type": "number", "minimum": 0, "maximum": 1, "format": "double"},
        "genre": {"type": "STRING", "format": "enum", "enum": ["drama", "comedy"]},
        "released": {"type": "STRING", "format": "date-time", "nullable": True},
        "cast": {
            "type": "ARRAY",
            "items": {
                "type": "OBJECT",
                "properties": {"name": {"type": "STRING"}, "lead": {"type": "BOOLEAN"}},
                "required": ["name"],
            },
            "minItems": "2",
            "maxItems": "3",
        },
        "budget": {"anyOf": [{"type": "INTEGER"}, {"type": "STRING"}]},
        "sequel": {"type": "OBJECT", "nullable": True, "properties": {"t": {"type": "STRING"}}},
    },
    "required": ["title", "rating", "genre", "cast"],
    "propertyOrdering": ["rating", "title"],
}


def test_google_schemas() -> None:
    converted = from_google_schema(GOOGLE_SCHEMA)
    assert converted["type"] == "object"
    assert converted["properties"]["released"]["type"] == ["string", "null"]
    assert converted["properties"]["cast"]["minItems"] == 2
    assert "format" not in converted["properties"]["genre"]
    jsonschema.Draft202012Validator.check_schema(converted)
    for seed in SEEDS:
        value = generate(converted, seed)
        assert errors(value, converted) == [], value
        assert list(value)[:2] == ["rating", "title"]
        assert 2 <= len(value["cast"]) <= 3


def test_google_proto_names_nullable_enum_and_refs() -> None:
    schema = from_google_schema(
        {
            "type": "object",
            "properties": {
                "mood": {"type": "STRING", "enum": ["up", "down"], "nullable": True},
                "next": {"ref": "#/defs/Step"},
                "steps": {"type": "ARRAY", "items": {"ref": "#/defs/Step"}, "min_items": "1"},
            },
            "defs": {"Step": {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}}}},
            "property_ordering": ["steps", "mood", "next"],
            "required": ["steps"],
        }
    )
    assert schema["properties"]["mood"]["enum"] == ["up", "down", None]
    assert schema["properties"]["next"] == {"$ref": "#/$defs/Step"}
    value = generate(schema, "g")
    assert errors(value, schema) == [] and list(value) == ["steps", "mood", "next"]


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("schema", [SCHEMAS["object"], Invoice.model_json_schema()])
def test_valid_answers_are_compact_json(schema: Any) -> None:
    answer = structured_answer(schema, "s")
    assert answer.kind == "valid" and ": " not in answer.text and ", " not in answer.text
    assert json.loads(answer.text) == answer.value == generate(schema, "s")


@pytest.mark.parametrize(
    "schema",
    [
        SCHEMAS["object"],
        SCHEMAS["$defs ref"],
        Invoice.model_json_schema(),
        Sentiment.model_json_schema(),
        from_google_schema(GOOGLE_SCHEMA),
    ],
)
@pytest.mark.parametrize("kind", INVALID_KINDS)
def test_invalid_answers_are_invalid_the_way_asked(schema: Any, kind: str) -> None:
    for seed in SEEDS:
        answer = structured_answer(schema, seed, kind)
        assert answer.kind == kind
        assert kind_of(answer.text, schema) == kind, (seed, answer.text)
        if kind == "not_json":
            assert answer.value is None
        else:
            assert json.loads(answer.text) == answer.value


def test_invalid_answers_vary_the_spoiled_place() -> None:
    schema = Invoice.model_json_schema()
    valid = generate(schema, "same")
    missing = set()
    for seed in SEEDS:
        spoiled = structured_answer(schema, seed, "missing_field").value
        missing.add(tuple(sorted(set(generate(schema, seed)) - set(spoiled))) or "nested")
    assert len(missing) > 1
    assert structured_answer(schema, "same", "wrong_type").value != valid


def test_invalid_answer_fallbacks() -> None:
    # Nothing required: missing_field becomes wrong_type.
    optional = {"type": "object", "properties": {"n": {"type": "integer"}}}
    answer = structured_answer(optional, "s", "missing_field")
    assert answer.kind == "wrong_type" and answer.value == {"n": str(generate(optional, "s")["n"])}
    # No property can take a wrong type: the root does, unless it must stay an object.
    untyped = {"type": "object", "properties": {"any": {}}, "required": ["any"]}
    assert structured_answer(untyped, "s", "wrong_type").value == generate(untyped, "s")["any"]
    assert kind_of(structured_answer(untyped, "s", "wrong_type").text, untyped) == "wrong_type"
    kept = structured_answer(untyped, "s", "wrong_type", object_root=True)
    assert kept.kind == "not_json"
    # Non-object roots get the wrong root type.
    for name in ("integer", "date", "enum", "bounded array"):
        answer = structured_answer(SCHEMAS[name], "s", "missing_field")
        assert answer.kind == "wrong_type" and kind_of(answer.text, SCHEMAS[name]) != "valid"
    # An empty schema takes anything: only prose is wrong.
    assert structured_answer({}, "s", "wrong_type").kind == "not_json"


def test_json_mode_without_a_schema() -> None:
    answer = structured_answer(None, "s")
    assert isinstance(answer.value, dict) and set(answer.value) == {"answer"}
    wrong = structured_answer(None, "s", "wrong_type")
    assert wrong.kind == "wrong_type" and not isinstance(json.loads(wrong.text), dict)
    assert structured_answer(None, "s", "missing_field").kind == "wrong_type"
    assert kind_of(structured_answer(None, "s", "not_json").text, {}) == "not_json"
    with pytest.raises(ValueError):
        structured_answer(None, "s", "rude")


def test_invalid_answers_choose_first_answers_and_cycle_kinds() -> None:
    every = InvalidAnswers(1.0, seed=0)
    kinds = [every.kind(f"r{i}", first_answer=True) for i in range(7)]
    assert kinds == [*INVALID_KINDS, *INVALID_KINDS, INVALID_KINDS[0]]
    assert every.kind("r-again", first_answer=False) is None  # a repair
    assert InvalidAnswers(0.0, seed=0).kind("r0", first_answer=True) is None

    def chosen(seed: int) -> set[str]:
        half = InvalidAnswers(0.5, seed=seed)
        return {f"r{i}" for i in range(200) if half.kind(f"r{i}", first_answer=True)}

    assert 60 < len(chosen(0)) < 140
    assert chosen(0) == chosen(0) and chosen(0) != chosen(1)
