"""Checks of the provider emulators' structured answers, shared by their test modules:
with the `jsonschema` library, which the emulators do not use."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, Field

FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


class Ingredient(BaseModel):
    name: str
    grams: int = Field(ge=1, le=5000)


class Recipe(BaseModel):
    """The schema the emulator tests ask for: nested models, a list, an enum, an optional."""

    title: str = Field(min_length=3)
    servings: int = Field(ge=1, le=12)
    cuisine: Literal["italian", "thai", "mexican"]
    vegetarian: bool
    ingredients: list[Ingredient] = Field(min_length=1)
    rating: float | None = Field(default=None, ge=0, le=5)


RECIPE_SCHEMA: dict[str, Any] = Recipe.model_json_schema()


def answer_kind(text: str, schema: dict[str, Any] | None) -> str:
    """How an answer's text fares: valid, not_json, missing_field (a `required` error
    anywhere), wrong_type (a `type` error anywhere) or other. A None schema is JSON mode
    (any object)."""
    try:
        value = json.loads(text)
    except ValueError:
        return "not_json"
    found: set[str] = set()
    validator = jsonschema.Draft202012Validator(
        schema or {"type": "object"}, format_checker=FORMATS
    )
    stack = list(validator.iter_errors(value))
    while stack:
        error = stack.pop()
        found.add(str(error.validator))
        stack.extend(error.context or ())
    if not found:
        return "valid"
    if "required" in found:
        return "missing_field"
    return "wrong_type" if "type" in found else "other"


def assert_kinds(kinds: dict[str, str], expected: Literal["valid", "invalid"]) -> None:
    """Every answer valid; or every one invalid, each of the three kinds at least once."""
    if expected == "valid":
        assert set(kinds.values()) == {"valid"}, kinds
    else:
        assert set(kinds.values()) == {"wrong_type", "missing_field", "not_json"}, kinds
