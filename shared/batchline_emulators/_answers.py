"""Structured answers for the provider emulators: deterministic JSON valid for a schema,
and, on demand, deliberately invalid answers.

`generate(schema, seed)` builds a value from a JSON Schema; the same (schema, seed) always
gives the same value, and other seeds vary it (enum members, numbers, strings and list
lengths are picked by hashes of the seed and the value's path). It handles:

- `type` (one or a list such as ``["string", "null"]``: the first non-null one), `enum`,
  `const`, `nullable` (OpenAPI), `default` (for a schema that says nothing else);
- objects: `properties` (every one listed is emitted, in `propertyOrdering` when given),
  `required`, `additionalProperties` (a map with no `properties` gets one entry),
  `minProperties`, `maxProperties`;
- arrays: `items`, `prefixItems` (and the older list form of `items`), `minItems`,
  `maxItems`, `uniqueItems` (best effort);
- numbers: `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum` (numbers, or the
  draft-4 booleans), `multipleOf`;
- strings: `minLength`, `maxLength`, `format` (date, date-time, time, email, uri, uuid,
  and hostname, ipv4, ipv6, duration), `pattern`;
- local `$ref` (``#/$defs/...``, ``#/definitions/...``, any ``#/...`` pointer), `allOf`
  (merged), `anyOf` / `oneOf` (the first non-null branch; for `oneOf`, the first whose
  value matches no other branch);
- recursive schemas: where a `$ref` comes back to one already followed on the way (or
  past 8 of them), only required properties, `minItems` items and null branches are
  used, so a value stays small and finite.

That covers what pydantic v2's `model_json_schema()` emits (nested models, lists of
models, enums, Optional, Literal, `Field(ge=, le=, gt=, lt=, multiple_of=)`, str length
limits, dates and times, discriminated unions).

Limits: `pattern` is generated from a small regular-expression subset (literals,
escapes such as ``\\d \\w \\s``, classes with ranges, ``.``, groups, ``|``, anchors and
the quantifiers ``* + ? {n} {n,} {n,m}``); lookaround, backreferences and ``\\p{...}``
are not, and then, or when a pattern fights `minLength`/`maxLength`, the string may not
match. `patternProperties`, `propertyNames`, `contains`, `not`, `if`/`then`/`else` and
`dependent*` are ignored, and a `format` wins over the length limits. Every value is
checked with jsonschema-rs; a few other seeds are tried before a best-effort value is
returned.

`from_google_schema` turns Gemini's `responseSchema` (Google's OpenAPI subset: upper-case
types, `nullable`, int64 limits as strings, `propertyOrdering`...) into JSON Schema.

`structured_answer(schema, seed, invalid)` is what an emulator sends: the compact JSON
text of a generated value, or, when `invalid` names one of `INVALID_KINDS`, an answer
spoiled that way: `wrong_type` (a property, or the root, of a type the schema refuses),
`missing_field` (a required property left out; `wrong_type` when nothing is required)
or `not_json` (prose that is not JSON). `InvalidAnswers` decides which first answers of a
batch are spoiled, for the emulators' `invalid_answer_rate`.
"""

from __future__ import annotations

import copy
import functools
import math
import random
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, TypeGuard, TypeVar

import jsonschema_rs
import orjson

from batchline_emulators._common import fraction, hex_digest

JSON_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
ALL_TYPES = frozenset(JSON_TYPES)
INVALID_KINDS = ("wrong_type", "missing_field", "not_json")
VALID = "valid"

#: Distinct `$ref`s along a path after which the generator keeps values minimal (a `$ref`
#: already on the path, a cycle, does so at once).
_SHALLOW_REFS = 8
#: Nesting after which the generator gives up (null) rather than recurse further.
_MAX_DEPTH = 64
#: Seeds tried before a value that fails the schema is returned anyway.
_ATTEMPTS = 4

_WORDS = (
    "amber",
    "basil",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "garnet",
    "harbor",
    "indigo",
    "juniper",
    "kestrel",
    "lumen",
    "meadow",
    "nectar",
    "orchid",
    "pebble",
)


# --------------------------------------------------------------------------- checking


_validators: dict[bytes, Any] = {}


def _validator(schema: Any) -> Any:
    """A compiled jsonschema-rs validator for `schema`, or None when it does not compile."""
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    if key not in _validators:
        if len(_validators) > 512:
            _validators.clear()
        try:
            _validators[key] = jsonschema_rs.validator_for(schema, validate_formats=True)
        except Exception:  # an invalid schema, regex or reference: nothing to check with
            _validators[key] = None
    return _validators[key]


def is_valid(value: Any, schema: Any) -> bool | None:
    """Whether `value` is valid for `schema` (formats included); None when `schema` cannot
    be compiled."""
    validator = _validator(schema)
    if validator is None:
        return None
    return bool(validator.is_valid(value))


# --------------------------------------------------------------------------- schemas


def _lookup(root: Any, ref: str) -> Any:
    """The node a local `$ref` (``#``, ``#/$defs/X``, ``#/definitions/X``...) points to."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    node = root
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _type_list(node: Mapping[str, Any]) -> list[str] | None:
    raw = node.get("type")
    if isinstance(raw, str):
        return [raw] if raw in ALL_TYPES else None
    if isinstance(raw, list):
        return [t for t in raw if t in ALL_TYPES] or None
    return None


def _merge_types(a: Any, b: Any) -> Any:
    left = [a] if isinstance(a, str) else list(a)
    right = [b] if isinstance(b, str) else list(b)
    both = [t for t in left if t in right]
    # An integer is a number: integer ∩ number is integer.
    if "integer" in left and "number" in right and "integer" not in both:
        both.append("integer")
    if "number" in left and "integer" in right and "integer" not in both:
        both.append("integer")
    return both[0] if len(both) == 1 else both


_LOWER_BOUNDS = ("minimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "maxLength", "maxItems", "maxProperties")


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Both schemas' constraints in one (for `allOf` and `$ref` siblings); best effort."""
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
        elif key == "properties" and isinstance(value, dict) and isinstance(out[key], dict):
            props = dict(out[key])
            for name, sub in value.items():
                props[name] = {"allOf": [props[name], sub]} if name in props else sub
            out[key] = props
        elif key == "required" and isinstance(value, list) and isinstance(out[key], list):
            out[key] = [*out[key], *(r for r in value if r not in out[key])]
        elif key == "type" and isinstance(value, str | list):
            out[key] = _merge_types(out[key], value)
        elif key == "enum" and isinstance(value, list) and isinstance(out[key], list):
            out[key] = [v for v in out[key] if v in value]
        elif key in _LOWER_BOUNDS and _is_number(value) and _is_number(out[key]):
            out[key] = max(out[key], value)
        elif key in _UPPER_BOUNDS and _is_number(value) and _is_number(out[key]):
            out[key] = min(out[key], value)
    return out


_N = TypeVar("_N", int, float)


def _filled(lo: _N | None, hi: _N | None, default: tuple[_N, _N]) -> tuple[_N, _N]:
    """A range's two ends: a missing one as far from the other as `default`'s ends are
    apart, both `default` when neither is given."""
    span = default[1] - default[0]
    if lo is None:
        return default if hi is None else (hi - span, hi)
    return (lo, lo + span) if hi is None else (lo, hi)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _flatten(node: Any, root: Any, depth: int = 0) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(`node` with its local `$ref`s followed and `allOf` merged in, the `$ref`s followed)."""
    if node is True or not isinstance(node, dict):
        return {}, ()
    refs: list[str] = []
    while "$ref" in node and len(refs) < 32:
        ref = str(node["$ref"])
        target = _lookup(root, ref)
        rest = {k: v for k, v in node.items() if k != "$ref"}
        refs.append(ref)
        if not isinstance(target, dict):
            node = rest
            break
        node = _merge(target, rest) if rest else target
    if "$ref" in node:  # a cycle of references with nothing between them
        node = {k: v for k, v in node.items() if k != "$ref"}
    if isinstance(node.get("allOf"), list):
        merged = {k: v for k, v in node.items() if k != "allOf"}
        if depth < 16:
            for sub in node["allOf"]:
                flat, more = _flatten(sub, root, depth + 1)
                refs += more
                merged = _merge(merged, flat)
        node = merged
    return node, tuple(refs)


def _branches(node: Mapping[str, Any]) -> tuple[str, list[Any]] | None:
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and node[key]:
            return key, list(node[key])
    return None


def _item_schemas(flat: Mapping[str, Any]) -> tuple[list[Any], Any]:
    """(schemas of the leading items, schema of the rest) of an array schema: `prefixItems`
    and `items`, or the older list form of `items` and `additionalItems`."""
    items = flat.get("items")
    if isinstance(items, list):
        return items, flat.get("additionalItems", True)
    prefix = flat.get("prefixItems")
    return (prefix if isinstance(prefix, list) else []), (True if items is None else items)


def _is_null_schema(node: Any, root: Any) -> bool:
    flat, _ = _flatten(node, root)
    return (
        flat.get("type") == "null"
        or flat.get("type") == ["null"]
        or ("const" in flat and flat["const"] is None)
    )


def _json_types(value: Any) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"integer", "number"} if value.is_integer() else {"number"}
    if isinstance(value, str):
        return {"string"}
    if isinstance(value, list):
        return {"array"}
    return {"object"}


def accepted_types(node: Any, root: Any, depth: int = 0) -> frozenset[str]:
    """The JSON types `node` may accept (a superset: what it surely refuses is outside)."""
    if node is False:
        return frozenset()
    if not isinstance(node, dict) or depth > 16:
        return ALL_TYPES
    flat, _ = _flatten(node, root)
    types = set(ALL_TYPES)
    listed = _type_list(flat)
    if listed is not None:
        allowed = set(listed)
        if "number" in allowed:
            allowed.add("integer")
        if flat.get("nullable") is True:
            allowed.add("null")
        types &= allowed
    if isinstance(flat.get("enum"), list):
        types &= set().union(*(_json_types(v) for v in flat["enum"])) if flat["enum"] else set()
    if "const" in flat:
        types &= _json_types(flat["const"])
    branches = _branches(flat)
    if branches is not None:
        union: set[str] = set()
        for sub in branches[1]:
            union |= accepted_types(sub, root, depth + 1)
        types &= union
    return frozenset(types)


# --------------------------------------------------------------------------- Google


#: Gemini's Schema fields (proto names too) and their JSON Schema names.
_GOOGLE_NAMES = {
    "any_of": "anyOf",
    "property_ordering": "propertyOrdering",
    "min_items": "minItems",
    "max_items": "maxItems",
    "min_length": "minLength",
    "max_length": "maxLength",
    "min_properties": "minProperties",
    "max_properties": "maxProperties",
}
_GOOGLE_INT64 = frozenset(
    {"minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"}
)


def from_google_schema(schema: Any) -> Any:
    """Gemini's `responseSchema` (Google's OpenAPI subset) as JSON Schema.

    Types become lower-case (``TYPE_UNSPECIFIED`` is dropped), `nullable: true` adds
    ``"null"`` to the type (and to an `enum`), int64 limits sent as strings become
    numbers, ``format: "enum"`` is dropped, and `ref`/`defs` become `$ref`/`$defs`.
    `propertyOrdering` is kept (JSON Schema ignores it; the generator honours it).
    """
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for raw_key, value in schema.items():
        key = _GOOGLE_NAMES.get(str(raw_key), str(raw_key))
        if key == "type":
            kind = str(value).lower()
            if kind in ALL_TYPES:
                out["type"] = kind
        elif key == "nullable":
            continue
        elif key in ("properties", "defs") and isinstance(value, dict):
            out["$defs" if key == "defs" else key] = {
                name: from_google_schema(sub) for name, sub in value.items()
            }
        elif key == "items":
            out[key] = from_google_schema(value)
        elif key == "anyOf" and isinstance(value, list):
            out[key] = [from_google_schema(sub) for sub in value]
        elif key in _GOOGLE_INT64 and isinstance(value, str) and value.strip().isdigit():
            out[key] = int(value)
        elif key == "ref" and isinstance(value, str):
            out["$ref"] = value.replace("#/defs/", "#/$defs/")
        elif key == "format" and value == "enum":
            continue
        else:
            out[key] = value
    if schema.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        if "type" not in out and isinstance(out.get("anyOf"), list):
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out


# --------------------------------------------------------------------------- patterns


class _Unsupported(Exception):
    """A regular-expression construct the pattern generator does not handle."""


@dataclass(frozen=True)
class _Lit:
    text: str


@dataclass(frozen=True)
class _Set:
    chars: str
    negated: bool = False


@dataclass(frozen=True)
class _Seq:
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Alt:
    options: tuple[_Node, ...]


@dataclass(frozen=True)
class _Rep:
    item: _Node
    lo: int
    hi: int | None


_Node = _Lit | _Set | _Seq | _Alt | _Rep

_DIGITS = "0123456789"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_UPPER = _LOWER.upper()
_WORD = _LOWER + _UPPER + _DIGITS + "_"
_SPACE = " \t\n\r\f\v"
#: What `.` and negated classes pick from, in order of preference.
_PRINTABLE = _LOWER + _DIGITS + _UPPER + "_-. :/@+"
_CLASS_ESCAPES = {"d": _DIGITS, "w": _WORD, "s": _SPACE}
_CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}


class _PatternParser:
    """A recursive-descent parser for the regular-expression subset in the module doc."""

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0

    def parse(self) -> _Node:
        node = self.alternation()
        if self.i != len(self.p):
            raise _Unsupported(f"unexpected {self.p[self.i]!r}")
        return node

    def peek(self) -> str:
        return self.p[self.i] if self.i < len(self.p) else ""

    def alternation(self) -> _Node:
        options = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.sequence())
        return options[0] if len(options) == 1 else _Alt(tuple(options))

    def sequence(self) -> _Node:
        items: list[_Node] = []
        while self.i < len(self.p) and self.peek() not in "|)":
            atom = self.atom()
            if atom is not None:
                items.append(self.quantified(atom))
        return items[0] if len(items) == 1 else _Seq(tuple(items))

    def atom(self) -> _Node | None:
        c = self.p[self.i]
        self.i += 1
        if c in "^$":
            return None
        if c == ".":
            return _Set("\n", negated=True)
        if c == "[":
            return self.char_class()
        if c == "(":
            return self.group()
        if c == "\\":
            return self.escape()
        if c in "*+?":
            raise _Unsupported("a quantifier with nothing to repeat")
        return _Lit(c)

    def escape(self) -> _Node | None:
        """What a backslash escape stands for: a literal, a class (``\\d``, ``\\W``...),
        or None for the word boundaries ``\\b`` and ``\\B``."""
        if self.i >= len(self.p):
            raise _Unsupported("a trailing backslash")
        e = self.p[self.i]
        self.i += 1
        if e in _CLASS_ESCAPES:
            return _Set(_CLASS_ESCAPES[e])
        if e in "DWS":
            return _Set(_CLASS_ESCAPES[e.lower()], negated=True)
        if e in "bB":
            return None
        if e in _CHAR_ESCAPES:
            return _Lit(_CHAR_ESCAPES[e])
        if e in "xu":
            width = 2 if e == "x" else 4
            digits = self.p[self.i : self.i + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise _Unsupported(f"\\{e}{digits}")
            self.i += width
            return _Lit(chr(int(digits, 16)))
        if e.isdigit() or e in "kpPc":
            raise _Unsupported(f"\\{e}")
        return _Lit(e)

    def class_member(self) -> str:
        """One member of a character class: a character, or the characters of ``\\d``,
        ``\\w`` or ``\\s``."""
        c = self.p[self.i]
        self.i += 1
        if c != "\\":
            return c
        node = self.escape()
        if isinstance(node, _Lit):
            return node.text
        if isinstance(node, _Set) and not node.negated:
            return node.chars
        raise _Unsupported("a negated class or a boundary inside a class")

    def char_class(self) -> _Node:
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        chars: list[str] = []
        first = True
        while True:
            if self.i >= len(self.p):
                raise _Unsupported("an unterminated class")
            if self.peek() == "]" and not first:
                self.i += 1
                break
            first = False
            member = self.class_member()
            if self.peek() == "-" and self.p[self.i + 1 : self.i + 2] not in ("]", ""):
                self.i += 1
                end = self.class_member()
                if len(member) != 1 or len(end) != 1 or ord(end) < ord(member):
                    raise _Unsupported("a bad range")
                # A huge range keeps its first 256 characters: enough to pick from.
                last = min(ord(end), ord(member) + 255)
                chars.append("".join(chr(o) for o in range(ord(member), last + 1)))
            else:
                chars.append(member)
        return _Set("".join(chars), negated)

    def group(self) -> _Node:
        if self.p.startswith("?:", self.i):
            self.i += 2
        elif self.p.startswith(("?P<", "?<"), self.i) and not self.p.startswith(
            ("?<=", "?<!"), self.i
        ):
            end = self.p.find(">", self.i)
            if end < 0:
                raise _Unsupported("an unterminated group name")
            self.i = end + 1
        elif self.peek() == "?":
            raise _Unsupported("lookaround or inline flags")
        node = self.alternation()
        if self.peek() != ")":
            raise _Unsupported("an unterminated group")
        self.i += 1
        return node

    def quantified(self, atom: _Node) -> _Node:
        c = self.peek()
        bounds: tuple[int, int | None] | None = None
        if c == "*":
            bounds, self.i = (0, None), self.i + 1
        elif c == "+":
            bounds, self.i = (1, None), self.i + 1
        elif c == "?":
            bounds, self.i = (0, 1), self.i + 1
        elif c == "{":
            match = re.match(r"\{(\d+)(,(\d*))?\}", self.p[self.i :])
            if match is not None:
                lo = int(match.group(1))
                hi: int | None = lo
                if match.group(2):
                    hi = int(match.group(3)) if match.group(3) else None
                bounds, self.i = (lo, hi), self.i + match.end()
        if bounds is None:
            return atom
        if self.peek() in ("?", "+"):  # lazy or possessive: the same strings match
            self.i += 1
        return _Rep(atom, bounds[0], bounds[1])


def _pattern_text(node: _Node, pick: Callable[[int], int], extra: int, minimal: bool) -> str:
    """A string `node` matches; `pick(n)` chooses among n options."""
    if isinstance(node, _Lit):
        return node.text
    if isinstance(node, _Set):
        if node.negated:
            options = [c for c in _PRINTABLE if c not in node.chars]
        else:
            options = [c for c in _PRINTABLE if c in node.chars] or list(dict.fromkeys(node.chars))
        if not options:
            raise _Unsupported("an empty class")
        return options[pick(len(options))]
    if isinstance(node, _Seq):
        return "".join(_pattern_text(item, pick, extra, minimal) for item in node.items)
    if isinstance(node, _Alt):
        return _pattern_text(node.options[pick(len(node.options))], pick, extra, minimal)
    span = 1_000_000 if node.hi is None else node.hi - node.lo
    more = 0 if minimal else min(span, pick(2) + extra)
    return "".join(_pattern_text(node.item, pick, extra, minimal) for _ in range(node.lo + more))


@functools.lru_cache(maxsize=256)
def _parsed(pattern: str) -> tuple[_Node, re.Pattern[str]] | None:
    try:
        return _PatternParser(pattern).parse(), re.compile(pattern)
    except (_Unsupported, re.error, IndexError):
        return None


def pattern_string(
    pattern: str, seed: str, min_length: int = 0, max_length: int | None = None
) -> str | None:
    """A string that `re.search(pattern, ...)` finds a match in, within the length limits;
    None when the pattern is outside the supported subset or no attempt fits."""
    parsed = _parsed(pattern)
    if parsed is None:
        return None
    tree, compiled = parsed
    for attempt, extra in enumerate((0, 0, 0, 1, 2, 4, 8, 16, 32, 64)):
        rng = random.Random(f"{seed}/{attempt}")  # str seeds hash the same in every process

        def pick(n: int, rng: random.Random = rng) -> int:
            return int(rng.random() * n)

        try:
            text = _pattern_text(tree, pick, extra, minimal=attempt == 1)
        except _Unsupported:
            return None
        if len(text) < min_length or (max_length is not None and len(text) > max_length):
            continue
        if compiled.search(text):
            return text
    return None


# --------------------------------------------------------------------------- values


def _format_string(fmt: str, h: int, word: str, digest: str) -> str | None:
    """A string in the JSON Schema `format` (None for a format it does not know)."""
    date = f"{2020 + h % 6:04d}-{1 + (h >> 4) % 12:02d}-{1 + (h >> 8) % 28:02d}"
    clock = f"{(h >> 13) % 24:02d}:{(h >> 18) % 60:02d}:{(h >> 24) % 60:02d}"
    if fmt == "date":
        return date
    if fmt == "date-time":
        return f"{date}T{clock}Z"
    if fmt == "time":
        return f"{clock}Z"
    if fmt in ("email", "idn-email"):
        return f"{word}.{digest[:4]}@example.com"
    if fmt in ("uri", "url", "iri"):
        return f"https://example.com/{word}/{digest[:6]}"
    if fmt in ("uri-reference", "iri-reference"):
        return f"/{word}/{digest[:6]}"
    if fmt == "uuid":
        return str(uuid.UUID(hex=digest[:32], version=4))
    if fmt in ("hostname", "idn-hostname"):
        return f"{word}.example.com"
    if fmt == "ipv4":
        return f"192.0.2.{1 + h % 254}"
    if fmt == "ipv6":
        return f"2001:db8::{h % 65535:x}"
    if fmt == "duration":
        return f"P{1 + h % 30}D"
    return None


class _Generator:
    """Builds a value for `root`, every choice a hash of (seed, path, purpose)."""

    def __init__(self, root: Any, seed: str) -> None:
        self.root = root
        self.seed = seed

    def digest(self, path: str, purpose: str) -> str:
        return hex_digest(self.seed, path, purpose)

    def pick(self, n: int, path: str, purpose: str) -> int:
        return int(self.digest(path, purpose)[:12], 16) % n if n > 0 else 0

    def value(
        self, node: Any, path: str = "", refs: frozenset[str] = frozenset(), depth: int = 0
    ) -> Any:
        """A value for `node` at `path`; `refs` are the `$ref`s followed to get there."""
        if node is False or depth > _MAX_DEPTH:
            return None
        flat, followed = _flatten(node, self.root)
        shallow = bool(refs.intersection(followed))
        refs = refs.union(followed)
        shallow = shallow or len(refs) > _SHALLOW_REFS
        if "const" in flat:
            return flat["const"]
        if isinstance(flat.get("enum"), list) and flat["enum"]:
            return self.enum_member(flat, path)
        branches = _branches(flat)
        if branches is not None:
            return self.branch_value(flat, branches, path, refs, depth)
        types = _type_list(flat)
        if types is None:
            if "default" in flat:
                return copy.deepcopy(flat["default"])
            types = [self.inferred_type(flat)]
        if flat.get("nullable") is True and "null" not in types:
            types = [*types, "null"]
        concrete = [t for t in types if t != "null"]
        if not concrete or (shallow and "null" in types):
            return None
        kind = concrete[0]
        if kind == "object":
            return self.object_value(flat, path, refs, depth, shallow)
        if kind == "array":
            return self.array_value(flat, path, refs, depth, shallow)
        if kind == "string":
            return self.string_value(flat, path)
        if kind in ("integer", "number"):
            return self.number_value(flat, path, integer=kind == "integer")
        return self.pick(2, path, "bool") == 0

    def recursive(self, node: Any, refs: frozenset[str]) -> bool:
        """Whether `node` leads back to a `$ref` already followed (or too deep)."""
        _, followed = _flatten(node, self.root)
        return bool(refs.intersection(followed)) or len(refs.union(followed)) > _SHALLOW_REFS

    @staticmethod
    def inferred_type(flat: Mapping[str, Any]) -> str:
        keys = set(flat)
        if keys & {"properties", "required", "additionalProperties", "minProperties"}:
            return "object"
        if keys & {"items", "prefixItems", "minItems", "maxItems", "uniqueItems"}:
            return "array"
        if keys & {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}:
            return "number"
        return "string"

    def enum_member(self, flat: Mapping[str, Any], path: str) -> Any:
        members: list[Any] = list(flat["enum"])
        types = _type_list(flat)
        if types is not None:
            allowed = set(types) | ({"integer"} if "number" in types else set())
            members = [m for m in members if _json_types(m) & allowed] or members
        non_null = [m for m in members if m is not None] or members
        return copy.deepcopy(non_null[self.pick(len(non_null), path, "enum")])

    def branch_value(
        self,
        flat: dict[str, Any],
        branches: tuple[str, list[Any]],
        path: str,
        refs: frozenset[str],
        depth: int,
    ) -> Any:
        keyword, options = branches
        base = {k: v for k, v in flat.items() if k != keyword}
        real = [o for o in options if not _is_null_schema(o, self.root)]
        if len(real) < len(options) and all(self.recursive(o, refs) for o in real):
            return None  # null ends a recursion (an Optional self-reference)
        first: Any = None
        for n, option in enumerate(real):
            sub, followed = _flatten(option, self.root)
            node = _merge(base, sub) if base else sub
            value = self.value(node, path, refs.union(followed), depth + 1)
            if keyword == "anyOf":
                return value
            if n == 0:
                first = value
            # oneOf: the value must match this branch only.
            if is_valid(value, self.rooted(flat)) is not False:
                return value
        return first

    def rooted(self, node: dict[str, Any]) -> dict[str, Any]:
        """`node` with the root's definitions, so its local `$ref`s still resolve."""
        if not isinstance(self.root, dict):
            return node
        extra = {k: self.root[k] for k in ("$defs", "definitions") if k in self.root}
        return {**extra, **node}

    def object_value(
        self, flat: dict[str, Any], path: str, refs: frozenset[str], depth: int, shallow: bool
    ) -> dict[str, Any]:
        props = flat.get("properties") if isinstance(flat.get("properties"), dict) else {}
        assert isinstance(props, dict)
        required = [r for r in flat.get("required") or [] if isinstance(r, str)]
        order = [k for k in flat.get("propertyOrdering") or [] if k in props]
        order += [k for k in props if k not in order]
        if shallow:
            order = [k for k in order if k in required]
        additional = flat.get("additionalProperties", True)
        extra_schema = additional if isinstance(additional, dict) else {}
        out: dict[str, Any] = {}
        for key in order:
            out[key] = self.value(props[key], f"{path}/{key}", refs, depth + 1)
        for key in required:
            if key not in out:
                out[key] = self.value(extra_schema, f"{path}/{key}", refs, depth + 1)
        wanted = int(flat.get("minProperties") or 0)
        if not props and isinstance(additional, dict) and not shallow:
            wanted = max(wanted, 1)  # a map: one entry shows its shape
        n = 0
        while len(out) < wanted and additional is not False:
            n += 1
            key = f"key{n}"
            if key not in out:
                out[key] = self.value(extra_schema, f"{path}/{key}", refs, depth + 1)
        most = flat.get("maxProperties")
        if isinstance(most, int):
            for key in reversed(list(out)):
                if len(out) <= most:
                    break
                if key not in required:
                    del out[key]
        return out

    def array_value(
        self, flat: dict[str, Any], path: str, refs: frozenset[str], depth: int, shallow: bool
    ) -> list[Any]:
        prefix, rest = _item_schemas(flat)
        shallow = shallow or self.recursive(rest, refs)
        lo = int(flat.get("minItems") or 0)
        hi_raw = flat.get("maxItems")
        hi = int(hi_raw) if _is_number(hi_raw) else None
        if rest is False:
            hi = len(prefix) if hi is None else min(hi, len(prefix))
        target = lo if shallow else max(lo, len(prefix), 1 + self.pick(2, path, "length"))
        n = target if hi is None else max(lo, min(target, hi))
        unique = flat.get("uniqueItems") is True
        out: list[Any] = []
        seen: set[bytes] = set()
        for i in range(n):
            schema = prefix[i] if i < len(prefix) else rest
            for attempt in range(8 if unique else 1):
                where = f"{path}/{i}" if attempt == 0 else f"{path}/{i}~{attempt}"
                item = self.value(schema, where, refs, depth + 1)
                key = orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
                if key not in seen:
                    break
            seen.add(key)
            out.append(item)
        return out

    def string_value(self, flat: Mapping[str, Any], path: str) -> str:
        digest = self.digest(path, "string")
        h = int(digest[:12], 16)
        word = _WORDS[h % len(_WORDS)]
        lo = int(flat.get("minLength") or 0)
        hi_raw = flat.get("maxLength")
        hi = int(hi_raw) if _is_number(hi_raw) else None
        fmt = flat.get("format")
        if isinstance(fmt, str):
            formatted = _format_string(fmt, h, word, digest)
            if formatted is not None:
                return formatted
        pattern = flat.get("pattern")
        if isinstance(pattern, str):
            matching = pattern_string(pattern, digest, lo, hi)
            if matching is not None:
                return matching
        text = f"{word} {digest[:4]}"
        n = 0
        while len(text) < lo:
            n += 1
            text += " " + _WORDS[(h + n) % len(_WORDS)]
        if hi is not None and len(text) > hi:
            text = text[:hi].rstrip() if hi > 0 else ""
            text = text if len(text) >= lo else text.ljust(lo, "x")
        return text

    def number_value(self, flat: Mapping[str, Any], path: str, *, integer: bool) -> int | float:
        lo, lo_open = _bound(flat, "minimum", "exclusiveMinimum", lower=True)
        hi, hi_open = _bound(flat, "maximum", "exclusiveMaximum", lower=False)
        step = flat.get("multipleOf")
        if _is_number(step) and step > 0:
            return self.multiple(step, lo, lo_open, hi, hi_open, path, integer)
        if integer:
            ilo = None if lo is None else (math.floor(lo) + 1 if lo_open else math.ceil(lo))
            ihi = None if hi is None else (math.ceil(hi) - 1 if hi_open else math.floor(hi))
            ilo, ihi = _filled(ilo, ihi, (1, 100))
            if ilo > ihi:
                return ilo
            return ilo + self.pick(ihi - ilo + 1, path, "integer")
        lo, hi = _filled(lo, hi, (0.0, 100.0))
        share = 0.1 + 0.8 * self.pick(1000, path, "number") / 1000
        value = round(lo + share * (hi - lo), 2)
        if value < lo or value > hi or (lo_open and value <= lo) or (hi_open and value >= hi):
            value = (lo + hi) / 2
        return value

    def multiple(
        self,
        step: int | float,
        lo: float | None,
        lo_open: bool,
        hi: float | None,
        hi_open: bool,
        path: str,
        integer: bool,
    ) -> int | float:
        exact = Fraction(str(step)) if isinstance(step, float) else Fraction(step)
        if integer:  # integer multiples of p/q are the multiples of p
            exact = Fraction(exact.numerator)
        kmin = None if lo is None else math.ceil(Fraction(str(lo)) / exact)
        kmax = None if hi is None else math.floor(Fraction(str(hi)) / exact)
        if kmin is not None and lo_open and kmin * exact <= Fraction(str(lo)):
            kmin += 1
        if kmax is not None and hi_open and kmax * exact >= Fraction(str(hi)):
            kmax -= 1
        kmin, kmax = _filled(kmin, kmax, (1, 10))
        if kmin > kmax:
            kmax = kmin
        start = kmin + self.pick(kmax - kmin + 1, path, "multiple")
        # Prefer a k whose float is an exact multiple too (validators divide floats).
        for k in [start, *range(kmin, min(kmax, kmin + 200) + 1)]:
            value = k * exact
            if value.denominator == 1:
                return int(value)
            number = float(value)
            if (number / float(step)).is_integer():
                return number
        return float(start * exact)


def _bound(
    flat: Mapping[str, Any], inclusive: str, exclusive: str, *, lower: bool
) -> tuple[float | None, bool]:
    """(the bound, whether it is exclusive), from either keyword (or the draft-4 booleans)."""
    value = flat.get(inclusive)
    ex = flat.get(exclusive)
    bound: float | None = value if _is_number(value) else None
    is_open = False
    if ex is True and bound is not None:
        is_open = True
    elif _is_number(ex):
        tighter = bound is None or (ex >= bound if lower else ex <= bound)
        if tighter:
            bound, is_open = ex, True
    return bound, is_open


def generate(schema: Any, seed: str = "") -> Any:
    """A value valid for the JSON Schema `schema`, the same for the same (schema, seed).

    Every value is checked with jsonschema-rs (formats included); when one fails (a
    pattern outside the supported subset, say), a few other seeds are tried, then the
    first value is returned anyway."""
    first: Any = None
    for attempt in range(_ATTEMPTS):
        value = _Generator(schema, seed if attempt == 0 else f"{seed}~{attempt}").value(schema)
        if attempt == 0:
            first = value
        if is_valid(value, schema) is not False:
            return value
    return first


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class StructuredAnswer:
    """What an emulated model says to a structured-output request."""

    #: The answer's text: compact JSON, or prose for `not_json`.
    text: str
    #: The JSON value (None for `not_json`).
    value: Any
    #: "valid", or the invalid kind applied (see `INVALID_KINDS`).
    kind: str


#: The JSON mode answer (no schema): any object will do.
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def structured_answer(
    schema: Any, seed: str, invalid: str | None = None, *, object_root: bool = False
) -> StructuredAnswer:
    """The answer to a request for JSON matching `schema` (None: any JSON object).

    `invalid` (one of `INVALID_KINDS`) spoils it: `missing_field` falls back to
    `wrong_type` when the value has no required property to remove, and `wrong_type`
    changes the root's type when no property can take a wrong one. With `object_root`
    (an Anthropic tool input must be an object) the root keeps its type and `not_json`
    is the last resort. The kind applied is in the answer's `kind`."""
    if schema is None:
        value: Any = {"answer": _Generator(None, seed).string_value({}, "/answer")}
        schema = _ANY_OBJECT
    else:
        value = generate(schema, seed)
    if invalid is None:
        return StructuredAnswer(_dumps(value), value, VALID)
    if invalid not in INVALID_KINDS:
        raise ValueError(f"unknown invalid answer kind {invalid!r}")
    spoiler = _Spoiler(schema, seed)
    if invalid == "missing_field":
        spoiled = spoiler.missing_field(value)
        if spoiled is not _NOTHING:
            return StructuredAnswer(_dumps(spoiled), spoiled, "missing_field")
        invalid = "wrong_type"
    if invalid == "wrong_type":
        spoiled = spoiler.wrong_type(value, keep_root=object_root)
        if spoiled is not _NOTHING:
            return StructuredAnswer(_dumps(spoiled), spoiled, "wrong_type")
    return StructuredAnswer(not_json_text(_dumps(value)), None, "not_json")


def not_json_text(text: str) -> str:
    """Prose with the answer cut off in the middle: not JSON, as models sometimes say."""
    return "Sure! Here is the answer you asked for:\n" + text[: max(1, len(text) // 2)]


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


_NOTHING: Any = object()


class _Spoiler:
    """Makes a valid value invalid in a chosen way, checking that it really is."""

    def __init__(self, schema: Any, seed: str) -> None:
        self.root = schema
        self.seed = seed

    def candidates(self, items: list[Any], purpose: str) -> list[Any]:
        """`items` in a seeded order, so different answers spoil different places."""
        if not items:
            return items
        start = int(hex_digest(self.seed, "spoil", purpose, n=8), 16) % len(items)
        return items[start:] + items[:start]

    def still_valid(self, value: Any) -> bool:
        return is_valid(value, self.root) is True

    def effective(self, node: Any) -> dict[str, Any] | None:
        """`node` flattened, through an `anyOf`/`oneOf` with a single non-null branch; None
        when several branches could take a value (spoiling one may still fit another)."""
        flat, _ = _flatten(node, self.root)
        branches = _branches(flat)
        if branches is None:
            return flat
        real = [b for b in branches[1] if not _is_null_schema(b, self.root)]
        if len(real) != 1:
            return None
        sub = self.effective(real[0])
        if sub is None:
            return None
        return _merge({k: v for k, v in flat.items() if k != branches[0]}, sub)

    def slots(
        self, value: Any, node: Any, path: tuple[Any, ...] = (), depth: int = 0
    ) -> Iterator[tuple[tuple[Any, ...], Any]]:
        """(path, schema) of every property and item inside `value` whose schema surely
        applies to it, outer ones first."""
        flat = self.effective(node)
        if flat is None or depth > 32:
            return
        inner: list[tuple[Any, Any]] = []
        if isinstance(value, dict) and isinstance(flat.get("properties"), dict):
            inner = [(k, sub) for k, sub in flat["properties"].items() if k in value]
        elif isinstance(value, list):
            prefix, rest = _item_schemas(flat)
            for i in range(len(value)):
                sub = prefix[i] if i < len(prefix) else rest
                if isinstance(sub, dict):
                    inner.append((i, sub))
        for step, sub in inner:
            yield (*path, step), sub
        for step, sub in inner:
            yield from self.slots(value[step], sub, (*path, step), depth + 1)

    def objects(self, value: Any) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
        """(path, schema) of the root object and of every object inside it, root first."""
        for path, sub in [((), self.root), *self.slots(value, self.root)]:
            flat = self.effective(sub)
            if flat is not None and isinstance(_at(value, path), dict):
                yield path, flat

    def missing_field(self, value: Any) -> Any:
        places: list[tuple[tuple[Any, ...], str]] = []
        for owner_path, owner in self.objects(value):
            required = [r for r in owner.get("required") or [] if isinstance(r, str)]
            places += [(owner_path, key) for key in required]
        for owner_path, key in self.candidates(places, "missing"):
            spoiled = copy.deepcopy(value)
            container = _at(spoiled, owner_path)
            if isinstance(container, dict) and key in container:
                del container[key]
                if not self.still_valid(spoiled):
                    return spoiled
        return _NOTHING

    def wrong_type(self, value: Any, *, keep_root: bool) -> Any:
        for path, sub in self.candidates(list(self.slots(value, self.root)), "wrong"):
            accepted = accepted_types(sub, self.root)
            if accepted == ALL_TYPES:
                continue
            spoiled = copy.deepcopy(value)
            parent = _at(spoiled, path[:-1])
            parent[path[-1]] = _wrong_value(parent[path[-1]], accepted)
            if not self.still_valid(spoiled):
                return spoiled
        if keep_root:
            return _NOTHING
        accepted = accepted_types(self.root, self.root)
        if accepted == ALL_TYPES:
            return _NOTHING
        spoiled = _wrong_value(value, accepted)
        return _NOTHING if self.still_valid(spoiled) else spoiled


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _wrong_value(current: Any, accepted: frozenset[str]) -> Any:
    """A value of a type `accepted` does not include, like a model's slips: the current
    value as a string ("42" for 42), else a number, a boolean, a list, an object or null."""
    if "string" not in accepted:
        if isinstance(current, str):
            return current + "?"
        if isinstance(current, bool | int | float) or current is None:
            return _dumps(current)
        return ", ".join(
            str(v) for v in (current.values() if isinstance(current, dict) else current)
        )
    if "integer" not in accepted and "number" not in accepted:
        return len(current) if isinstance(current, str | list | dict) else 42
    if "boolean" not in accepted:
        return True
    if "array" not in accepted:
        return [current]
    if "object" not in accepted:
        return {"value": current}
    return None


# --------------------------------------------------------------------------- choosing


class InvalidAnswers:
    """Which structured first answers of one batch are invalid, and how.

    A request gets an invalid first answer when a hash of (`seed`, its id) falls below
    `rate`; the kinds cycle through `INVALID_KINDS` in the order the batch's requests are
    planned (input order), so three invalid answers show all three. Repairs (a
    conversation that already has a model turn) are always answered validly."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.seed = seed
        self.count = 0

    def kind(self, request_id: str, *, first_answer: bool) -> str | None:
        if not first_answer or self.rate <= 0:
            return None
        if fraction(self.seed, "invalid_answer", request_id) >= self.rate:
            return None
        kind = INVALID_KINDS[self.count % len(INVALID_KINDS)]
        self.count += 1
        return kind
