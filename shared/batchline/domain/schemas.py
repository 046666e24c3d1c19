"""Response schemas: what a structured answer must look like, per provider and on collect.

A `ResponseSchema` is a JSON Schema with a name, given inline on a line (`response_schema`),
registered in the work bucket (`schema`), or set as the job's default. Before anything is
sent, each provider's descriptor rejects a schema it cannot express, naming the
construct (`check_expressible` does the work). Each provider gets its own encoding (see `domain/providers/*`); OpenAI's strict
mode gets the strict-compatible form `openai_strict` builds when that keeps the schema's
meaning. On collect, `Validator` checks each answer with a compiled validator.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

#: Provider tool/format names: OpenAI's `json_schema.name` and Anthropic's tool name.
_NAME_SAFE = re.compile(r"[^a-zA-Z0-9_-]")
DEFAULT_NAME = "response"

#: Keywords that change which values are valid and that Gemini's responseJsonSchema
#: cannot express. Annotation-only keywords (title, description, examples...) are fine.
GEMINI_INEXPRESSIBLE = frozenset(
    {
        "not",
        "if",
        "then",
        "else",
        "patternProperties",
        "dependentSchemas",
        "dependentRequired",
        "unevaluatedProperties",
        "unevaluatedItems",
        "propertyNames",
        "contains",
    }
)
#: What OpenAI's strict mode does not take (structured outputs' "supported schemas"):
#: all of the above, and these.
_STRICT_UNSUPPORTED = GEMINI_INEXPRESSIBLE | {
    "allOf",
    "minContains",
    "maxContains",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "uniqueItems",
    "prefixItems",
}
#: Keywords whose value is one subschema / a map of subschemas / a list of subschemas.
_SUB_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains")
_SUB_MAP = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SUB_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")


_CREATED_MAX = 256
_created: dict[tuple[str | None, bytes], ResponseSchema] = {}


class SchemaError(ValueError):
    """A schema batchline cannot use; `where` is the construct's place in the schema."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.where = where
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ResponseSchema:
    """A checked JSON Schema that answers must match, with a provider-safe name and a digest naming both."""

    name: str
    schema: dict[str, Any]
    digest: str  # identifies name + schema: chunk manifests refer to it

    @classmethod
    def create(cls, schema: Any, name: str | None = None) -> ResponseSchema:
        """Check that `schema` is a usable JSON Schema and give it a provider-safe name.

        A file usually repeats one schema on every line: the same one (same name, same
        JSON) is checked once and shared.
        """
        if not isinstance(schema, dict):
            raise SchemaError("", "a JSON Schema must be an object")
        key = (name, orjson.dumps(schema))
        known = _created.get(key)
        if known is not None:
            return known
        _check_valid(schema)
        safe = _NAME_SAFE.sub("_", name or str(schema.get("title") or DEFAULT_NAME))[:64]
        canonical = orjson.dumps({"name": safe, "schema": schema}, option=orjson.OPT_SORT_KEYS)
        made = cls(safe, schema, hashlib.sha256(canonical).hexdigest()[:24])
        if len(_created) >= _CREATED_MAX:
            _created.pop(next(iter(_created)))
        _created[key] = made
        return made

    @classmethod
    def from_line_value(cls, value: Any) -> ResponseSchema:
        """A line's `response_schema`: a JSON Schema, or `{"name", "schema"}` around one
        (OpenAI's `json_schema` shape; `strict` and `description` there are accepted)."""
        if isinstance(value, dict) and isinstance(value.get("schema"), dict):
            extra = set(value) - {"name", "schema", "strict", "description"}
            if not extra:
                name = value.get("name")
                if name is not None and not isinstance(name, str):
                    raise SchemaError("name", "expected a string")
                return cls.create(value["schema"], name)
        return cls.create(value)

    def to_dict(self) -> dict[str, Any]:
        """The schema as the work bucket keeps it (name, schema, digest)."""
        return {"name": self.name, "schema": self.schema, "digest": self.digest}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResponseSchema:
        """The schema `to_dict` kept, read back without checking it again."""
        return cls(data["name"], data["schema"], data["digest"])


def _check_valid(schema: dict[str, Any]) -> None:
    import jsonschema_rs

    try:
        jsonschema_rs.validator_for(schema, validate_formats=False)
    except jsonschema_rs.ValidationError as exc:
        where = _pointer(list(getattr(exc, "instance_path", [])))
        raise SchemaError(where, f"not a valid JSON Schema ({exc.message})") from None
    except (ValueError, jsonschema_rs.ReferencingError) as exc:
        raise SchemaError("", f"not a usable JSON Schema ({exc})") from None


def _pointer(parts: list[Any]) -> str:
    return "/".join(str(p) for p in parts)


def walk(schema: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema with its place (`properties.items.items`), the root first."""
    if not isinstance(schema, dict):
        return
    yield where, schema
    prefix = f"{where}." if where else ""
    for key in _SUB_ONE:
        if isinstance(schema.get(key), dict):
            yield from walk(schema[key], f"{prefix}{key}")
    for key in _SUB_MAP:
        sub = schema.get(key)
        if isinstance(sub, dict):
            for name, value in sub.items():
                yield from walk(value, f"{prefix}{key}.{name}")
    for key in _SUB_LIST:
        sub = schema.get(key)
        if isinstance(sub, list):
            for i, value in enumerate(sub):
                yield from walk(value, f"{prefix}{key}[{i}]")


def _root_is_object(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "object":
        return True
    if kind is None and "properties" in schema and not any(k in schema for k in _SUB_LIST):
        return True
    ref = schema.get("$ref")
    if isinstance(ref, str) and kind is None:
        target = resolve(schema, ref)
        return target is not None and target.get("type") == "object"
    return False


def resolve(root: dict[str, Any], ref: str) -> dict[str, Any] | None:
    """A local `$ref` (`#/$defs/X`, `#/definitions/X`, `#`) within `root`."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


def check_expressible(
    schema: ResponseSchema,
    provider: str,
    *,
    root_object_in: str | None = None,
    inexpressible: frozenset[str] = frozenset(),
    inexpressible_in: str = "",
) -> None:
    """Raise SchemaError naming the construct if `provider` cannot express `schema`.

    A provider that puts the schema where only an object goes (`root_object_in`, e.g. "a
    tool's input_schema") refuses any other root; `inexpressible` are the keywords it
    cannot express (in `inexpressible_in`, e.g. "Gemini's responseJsonSchema"). Remote
    `$ref`s are refused for every provider: nothing is fetched.
    """
    root = schema.schema
    if root_object_in is not None and not _root_is_object(root):
        raise SchemaError(
            "type",
            f"{provider} takes an object at the root of {root_object_in} (type 'object'), "
            f"got {root.get('type', 'no type')!r}: wrap the value in an object",
        )
    for where, node in walk(root):
        if "$ref" in node and not str(node["$ref"]).startswith("#"):
            raise SchemaError(
                f"{where}.$ref" if where else "$ref",
                f"only local references ('#/$defs/...') can be sent, got {node['$ref']!r}",
            )
        for key in inexpressible:
            if key in node:
                raise SchemaError(
                    f"{where}.{key}" if where else key,
                    f"{inexpressible_in} cannot express {key!r}",
                )


# -- OpenAI strict mode -------------------------------------------------------------------

_strict_cache: dict[str, dict[str, Any] | None] = {}


def openai_strict(schema: ResponseSchema) -> dict[str, Any] | None:
    """The strict-mode form of `schema`, or None when strict mode would change its meaning.

    Strict mode wants `additionalProperties: false` on every object and every property
    required. Missing `additionalProperties` becomes false; an optional property becomes
    required and nullable, and `NullStripper` removes those nulls again before the
    answer is validated against the original schema. So every answer strict mode allows is
    valid for the original. A schema that allows extra properties, or uses a keyword strict
    mode does not take (`strict_blocker` names it), is sent non-strict and validated on
    collect.
    """
    if schema.digest not in _strict_cache:
        blocker = strict_blocker(schema.schema)
        _strict_cache[schema.digest] = None if blocker else _make_strict(schema.schema)
    return _strict_cache[schema.digest]


def strict_blocker(schema: dict[str, Any]) -> str | None:
    """Why `schema` cannot go strict without changing its meaning, or None."""
    if not _root_is_object(schema) or "anyOf" in schema:
        return "the root is not a plain object"
    for where, node in walk(schema):
        place = where or "the root"
        for key in _STRICT_UNSUPPORTED:
            if key in node and not (key == "allOf" and _single_allof(node)):
                return f"{place} uses {key!r}"
        extra = node.get("additionalProperties")
        if extra is not None and extra is not False:
            return f"{place} allows additional properties"
        if isinstance(node.get("items"), list):
            return f"{place} has tuple items"
    return None


def _single_allof(node: dict[str, Any]) -> bool:
    parts = node.get("allOf")
    return isinstance(parts, list) and len(parts) == 1 and isinstance(parts[0], dict)


def _make_strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_make_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "default":
            continue  # an annotation strict mode refuses; validation never used it
        if key == "allOf" and _single_allof(node):
            out.update({k: v for k, v in _make_strict(value[0]).items() if k not in out})
            continue
        if key in _SUB_MAP and isinstance(value, dict):
            out[key] = {name: _make_strict(sub) for name, sub in value.items()}
        else:
            out[key] = _make_strict(value)
    if out.get("type") == "object" or "properties" in out:
        properties = out.get("properties") or {}
        required = set(out.get("required") or ())
        out["properties"] = {
            name: (sub if name in required else _nullable(sub)) for name, sub in properties.items()
        }
        out["required"] = list(properties)
        out["additionalProperties"] = False
    return out


def _nullable(node: Any) -> Any:
    if not isinstance(node, dict) or _allows_null(node):
        return node
    kind = node.get("type")
    if isinstance(kind, str) and "enum" not in node and "const" not in node:
        return {**node, "type": [kind, "null"]}
    if isinstance(kind, list):
        return {**node, "type": [*kind, "null"]} if "enum" not in node else _any_null(node)
    if "anyOf" in node and len(node) == 1:
        return {"anyOf": [*node["anyOf"], {"type": "null"}]}
    return _any_null(node)


def _any_null(node: dict[str, Any]) -> dict[str, Any]:
    keep = {k: v for k, v in node.items() if k in ("description", "title")}
    inner = {k: v for k, v in node.items() if k not in ("description", "title")}
    return {"anyOf": [inner, {"type": "null"}], **keep}


def _allows_null(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    if "enum" in node and None in node["enum"]:
        return True
    branches = node.get("anyOf") or node.get("oneOf")
    return isinstance(branches, list) and any(
        isinstance(b, dict) and b.get("type") == "null" for b in branches
    )


@dataclass
class _Strip:
    """Where strict mode may have put a `null` the original schema does not take: the
    optional, non-nullable properties of an object (`drop`), and the places below it."""

    drop: frozenset[str] = frozenset()
    children: dict[str, _Strip] = field(default_factory=dict)
    items: _Strip | None = None

    def apply(self, value: Any) -> bool:
        """Remove the nulls in place; whether there were any."""
        removed = False
        if isinstance(value, dict):
            for key in self.drop:
                if key in value and value[key] is None:
                    del value[key]
                    removed = True
            for key, below in self.children.items():
                if key in value:
                    removed = below.apply(value[key]) or removed
        elif isinstance(value, list) and self.items is not None:
            for item in value:
                removed = self.items.apply(item) or removed
        return removed


class NullStripper:
    """Removes the `null`s strict mode was allowed to give for optional properties whose
    own schema takes no null, so the answer means what the original schema means.

    The places to look are worked out once per schema; an answer is then walked only
    where such a null can be, and changed in place.
    """

    def __init__(self, schema: dict[str, Any]) -> None:
        self._root = schema
        self._building: dict[int, _Strip] = {}
        self._plan = self._plan_of(schema)

    def __call__(self, value: Any) -> bool:
        """Strip `value` in place; whether it changed (if not, its JSON text still is it)."""
        return self._plan is not None and self._plan.apply(value)

    def _plan_of(self, node: Any, depth: int = 0) -> _Strip | None:
        seen = 0
        while isinstance(node, dict) and "$ref" in node and seen < 32:
            node, seen = resolve(self._root, str(node["$ref"])), seen + 1
        if not isinstance(node, dict) or depth > 64:
            return None
        if id(node) in self._building:  # a recursive schema: the plan being built
            return self._building[id(node)]
        plan = self._building[id(node)] = _Strip()
        properties = node.get("properties")
        if isinstance(properties, dict):
            required = set(node.get("required") or ())
            plan.drop = frozenset(
                key
                for key, sub in properties.items()
                if key not in required and isinstance(sub, dict) and not _allows_null(sub)
            )
            for key, sub in properties.items():
                below = self._plan_of(sub, depth + 1)
                if below is not None:
                    plan.children[key] = below
        items = node.get("items")
        if isinstance(items, dict):
            plan.items = self._plan_of(items, depth + 1)
        for keyword in ("allOf", "anyOf", "oneOf"):
            for branch in node.get(keyword) or ():
                other = self._plan_of(branch, depth + 1)
                if other is not None and other is not plan:
                    plan.drop |= other.drop
                    plan.children.update(other.children)
                    plan.items = plan.items or other.items
        del self._building[id(node)]
        empty = not plan.drop and not plan.children and plan.items is None
        return None if empty and depth else plan


# -- validation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    """Why an answer is not valid for its schema: where (`$.items[0].price`) and what."""

    path: str
    message: str

    @property
    def text(self) -> str:
        """The violation as one line: `path: message`."""
        return f"{self.path}: {self.message}"


class SchemaCheck(NamedTuple):
    """What validating an answer against its schema found."""

    parsed: Any
    violation: Violation | None
    #: The answer's text when `parsed` is exactly its JSON: written as it is, not again.
    verbatim: str | None = None


class Validator:
    """A schema compiled once, checking answers on the collect hot path."""

    def __init__(self, schema: ResponseSchema, *, strip_nulls: bool = False) -> None:
        import jsonschema_rs

        self.schema = schema
        self._strip = NullStripper(schema.schema) if strip_nulls else None
        self._compiled = jsonschema_rs.validator_for(schema.schema, validate_formats=True)

    def check(self, text: str | None, structured: Any = None) -> SchemaCheck:
        """The answer (`structured`, else the JSON `text`) parsed, with its violation when
        it is not valid."""
        verbatim = None
        if structured is not None:
            value = structured
        elif text is None:
            return SchemaCheck(None, _EMPTY)
        else:
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                if not text.strip():
                    return SchemaCheck(None, _EMPTY)
                return SchemaCheck(None, Violation("$", f"the answer is not JSON ({exc})"))
            verbatim = text
        if self._strip is not None and self._strip(value):
            verbatim = None  # nulls removed: the text no longer is the answer
        if self._compiled.is_valid(value):
            return SchemaCheck(value, None, verbatim)
        error = next(iter(self._compiled.iter_errors(value)))
        return SchemaCheck(value, Violation(json_path(error.instance_path), error.message))


_EMPTY = Violation("$", "the answer is empty, not JSON")


def json_path(parts: Any) -> str:
    """A JSONPath (`$.items[0].price`) from a validator's path parts."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}"
        else:
            out += "[" + orjson.dumps(str(part)).decode() + "]"
    return out


def repair_feedback(violation: Violation) -> str:
    """What a repair tells the model about its previous answer."""
    return (
        "Your previous answer does not match the required JSON schema: "
        f"at {violation.path}, {violation.message}. "
        "Answer again with only JSON that matches the schema exactly."
    )
