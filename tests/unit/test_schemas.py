"""Response schemas: checks per provider, OpenAI's strict form, validation of answers."""

from __future__ import annotations

import enum
from typing import Literal

import jsonschema
import orjson
import pytest
from pydantic import BaseModel, Field

from batchline.domain.providers import anthropic, openai, vertex
from batchline.domain.providers.registry import provider as provider_of
from batchline.domain.requests import InvalidLine, Request, SchemaContext, parse_line
from batchline.domain.schemas import (
    NullStripper,
    ResponseSchema,
    SchemaError,
    Validator,
    openai_strict,
    strict_blocker,
)


class Kind(enum.StrEnum):
    invoice = "invoice"
    receipt = "receipt"


class Item(BaseModel):
    name: str
    quantity: int = Field(ge=1, le=1000)
    price: float = Field(ge=0)


class Invoice(BaseModel):
    kind: Kind
    number: str
    items: list[Item]
    currency: Literal["EUR", "USD"] = "EUR"
    note: str | None = None


INVOICE = Invoice.model_json_schema()


def schema(value: dict, name: str | None = None) -> ResponseSchema:
    return ResponseSchema.create(value, name)


def test_a_pydantic_schema_goes_strict_and_keeps_its_meaning() -> None:
    s = schema(INVOICE)
    strict = openai_strict(s)
    assert strict is not None
    # every object closed, every property required, the optional ones nullable
    assert strict["additionalProperties"] is False
    assert set(strict["required"]) == {"kind", "number", "items", "currency", "note"}
    assert strict["$defs"]["Item"]["additionalProperties"] is False
    currency = strict["properties"]["currency"]
    assert "default" not in currency and {"type": "null"} in currency["anyOf"]
    jsonschema.Draft202012Validator.check_schema(strict)
    # An answer strict mode allows is valid for the original once the added nulls go.
    answer = {
        "kind": "invoice",
        "number": "A-1",
        "items": [{"name": "x", "quantity": 2, "price": 1.5}],
        "currency": None,
        "note": None,
    }
    jsonschema.validate(answer, strict)
    assert NullStripper(INVOICE)(answer)  # in place: it says whether it removed any
    assert "currency" not in answer and answer["note"] is None  # note takes null itself
    Invoice.model_validate(answer)
    assert not NullStripper(INVOICE)(answer)  # nothing left to remove


@pytest.mark.parametrize(
    ("construct", "value"),
    [
        (
            "allows additional properties",
            {"type": "object", "additionalProperties": {"type": "integer"}},
        ),
        (
            "uses 'patternProperties'",
            {
                "type": "object",
                "properties": {"a": {"type": "object", "patternProperties": {"^x": {}}}},
            },
        ),
        (
            "uses 'minLength'",
            {"type": "object", "properties": {"a": {"type": "string", "minLength": 2}}},
        ),
        ("uses 'not'", {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}),
        ("the root is not a plain object", {"type": "array", "items": {"type": "string"}}),
    ],
)
def test_constructs_strict_mode_cannot_take_send_the_schema_non_strict(
    construct: str, value: dict
) -> None:
    assert construct in (strict_blocker(value) or "")
    s = schema(value)
    assert openai_strict(s) is None
    request = Request(
        1,
        "a",
        "openai",
        "gpt-4o-mini",
        params={"messages": [{"role": "user", "content": "x"}]},
        schema=s,
    )
    fmt = orjson.loads(openai.encode(request))["body"]["response_format"]
    assert fmt["json_schema"]["strict"] is False and fmt["json_schema"]["schema"] == value


def check_for_provider(s: ResponseSchema, provider: str) -> None:
    provider_of(provider).check_schema(s)


def test_an_array_root_is_rejected_for_openai_and_anthropic_naming_the_construct() -> None:
    s = schema({"type": "array", "items": {"type": "string"}})
    for provider in ("openai", "anthropic"):
        with pytest.raises(SchemaError) as caught:
            check_for_provider(s, provider)
        assert caught.value.where == "type" and "object" in caught.value.reason
    check_for_provider(s, "vertex")


def test_vertex_rejects_what_gemini_cannot_express() -> None:
    s = schema(
        {"type": "object", "properties": {"a": {"type": "object", "patternProperties": {"^x": {}}}}}
    )
    with pytest.raises(SchemaError) as caught:
        check_for_provider(s, "vertex")
    assert caught.value.where == "properties.a.patternProperties"
    check_for_provider(s, "anthropic")


def test_an_invalid_json_schema_is_named() -> None:
    with pytest.raises(SchemaError) as caught:
        ResponseSchema.create({"type": "objekt"})
    assert "not a valid JSON Schema" in str(caught.value)


def test_validator_reports_the_path_and_handles_text_and_objects() -> None:
    v = Validator(schema(INVOICE))
    good = {"kind": "receipt", "number": "1", "items": [{"name": "a", "quantity": 1, "price": 0}]}
    text = orjson.dumps(good).decode()
    assert v.check(text) == (good, None, text)  # valid text: written as it is
    assert v.check(None, structured=good) == (good, None, None)
    bad = {**good, "items": [{"name": "a", "quantity": 0, "price": 0}]}
    violation = v.check(orjson.dumps(bad).decode()).violation
    assert violation is not None and violation.path == "$.items[0].quantity"
    violation = v.check("{not json").violation
    assert violation is not None and violation.path == "$" and "not JSON" in violation.message
    for empty in (None, "", " \n"):
        violation = v.check(empty).violation
        assert violation is not None and violation.path == "$" and "empty" in violation.message
    violation = v.check(orjson.dumps({**good, "kind": "memo"}).decode()).violation
    assert violation is not None and violation.path == "$.kind"


def test_strict_answers_are_written_verbatim_unless_nulls_were_removed() -> None:
    v = Validator(schema(INVOICE), strip_nulls=True)
    good = {"kind": "receipt", "number": "1", "items": [{"name": "a", "quantity": 1, "price": 0}]}
    text = orjson.dumps({**good, "note": None}).decode()  # note takes null itself: kept
    assert v.check(text) == ({**good, "note": None}, None, text)
    check = v.check(orjson.dumps({**good, "currency": None}).decode())
    assert check == (good, None, None)  # the parsed answer no longer is the text


def test_each_provider_encodes_the_schema_its_own_way() -> None:
    s = schema(INVOICE, "Invoice")
    params = {"messages": [{"role": "user", "content": "x"}]}
    body = orjson.loads(
        openai.encode(Request(1, None, "openai", "gpt-4.1", params=params, schema=s))
    )
    assert body["body"]["response_format"]["json_schema"]["name"] == "Invoice"
    line = orjson.loads(
        anthropic.encode(
            Request(1, None, "anthropic", "claude-haiku-4-5", params=params, schema=s), 1024
        )
    )
    assert line["params"]["tools"][0]["input_schema"] == INVOICE
    assert line["params"]["tool_choice"] == {"type": "tool", "name": "Invoice"}
    row = orjson.loads(
        vertex.encode(Request(1, None, "vertex", "gemini-2.5-flash", params=params, schema=s))
    )
    config = row["request"]["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == INVOICE


def test_anthropic_tool_answers_are_structured() -> None:
    result = anthropic.normalise(
        {
            "custom_id": "bl-1",
            "result": {
                "type": "succeeded",
                "message": {
                    "content": [
                        {"type": "tool_use", "id": "t", "name": "Invoice", "input": {"a": 1}}
                    ],
                    "stop_reason": "tool_use",
                    "usage": {"input_tokens": 3, "output_tokens": 4},
                },
            },
        }
    )
    assert result.structured == {"a": 1} and result.text is None


def test_repair_turns_append_the_answer_and_the_feedback() -> None:
    line = {"custom_id": "bl-1", "body": {"messages": [{"role": "user", "content": "q"}]}}
    openai.add_repair_turn(line, '{"a": 1}', "fix $.a")
    assert [m["role"] for m in line["body"]["messages"]] == ["user", "assistant", "user"]
    row = {"request": {"contents": [{"role": "user", "parts": [{"text": "q"}]}]}}
    vertex.add_repair_turn(row, "x", "fix")
    assert [c["role"] for c in row["request"]["contents"]] == ["user", "model", "user"]
    params = {"custom_id": "bl-1", "params": {"messages": [{"role": "user", "content": "q"}]}}
    anthropic.add_repair_turn(params, "", "fix")
    assert params["params"]["messages"][1] == {"role": "assistant", "content": "(no answer)"}


def _parse(obj: dict, context: SchemaContext | None = None) -> Request | InvalidLine:
    return parse_line(
        1,
        orjson.dumps(obj),
        default_model=None,
        max_line_bytes=1 << 20,
        schemas=context or SchemaContext(),
    )


MSG = [{"role": "user", "content": "x"}]


def test_lines_take_inline_registered_and_default_schemas() -> None:
    got = _parse(
        {
            "model": "openai/gpt-4.1",
            "messages": MSG,
            "response_schema": {"name": "Inv", "schema": INVOICE},
        }
    )
    assert isinstance(got, Request) and got.schema is not None and got.schema.name == "Inv"
    registered = schema(INVOICE, "Invoice")

    def lookup(name: str) -> ResponseSchema:
        if name != "Invoice":
            raise SchemaError("", f"no registered schema named {name!r}")
        return registered

    got = _parse(
        {"model": "openai/gpt-4.1", "messages": MSG, "schema": "Invoice"}, SchemaContext(lookup)
    )
    assert isinstance(got, Request) and got.schema == registered
    got = _parse({"model": "openai/gpt-4.1", "messages": MSG}, SchemaContext(lookup, registered))
    assert isinstance(got, Request) and got.schema == registered
    bad = _parse(
        {"model": "openai/gpt-4.1", "messages": MSG, "schema": "Other"}, SchemaContext(lookup)
    )
    assert isinstance(bad, InvalidLine) and bad.field == "schema" and "Other" in bad.reason


def test_a_line_whose_schema_its_provider_cannot_express_is_invalid_naming_the_construct() -> None:
    got = _parse(
        {
            "model": "anthropic/claude-haiku-4-5",
            "messages": MSG,
            "response_schema": {"type": "array"},
        }
    )
    assert isinstance(got, InvalidLine) and got.field == "response_schema"
    assert "type" in got.reason and "object" in got.reason
    got = _parse(
        {"model": "openai/gpt-4.1", "messages": MSG, "response_schema": {"type": "objekt"}}
    )
    assert isinstance(got, InvalidLine) and got.field.startswith("response_schema")


def test_native_lines_keep_their_own_schema_for_validation() -> None:
    body = {
        "model": "gpt-4.1",
        "messages": MSG,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Inv", "schema": INVOICE, "strict": False},
        },
    }
    got = _parse({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body})
    assert isinstance(got, Request) and got.schema is not None and got.schema.schema == INVOICE
    encoded = orjson.loads(openai.encode(got))
    assert encoded["body"] == body  # native passes untouched


def test_added_nulls_are_stripped_at_any_depth_and_in_recursive_schemas() -> None:
    tree = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "weight": {"type": "number"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
                "required": ["label"],
            }
        },
        "$ref": "#/$defs/Node",
    }
    answer = {
        "label": "a",
        "weight": None,
        "children": [{"label": "b", "weight": 2, "children": [{"label": "c", "weight": None}]}],
    }
    assert NullStripper(tree)(answer)
    assert answer == {
        "label": "a",
        "children": [{"label": "b", "weight": 2, "children": [{"label": "c"}]}],
    }
    jsonschema.validate(answer, tree)
