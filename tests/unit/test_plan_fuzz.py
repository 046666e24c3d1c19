"""Fuzzing line shapes through planning: no line may stop a plan, and every line comes out
exactly once, as a chunked request or an invalid line.

Lines are the four formats with random field sets and values, and the shapes that broke
planning before: nesting 0-400 deep (orjson reads 1,024 levels but writes 254), integers
beyond 64 bits, NaN-ish literals, lone surrogate escapes, invalid UTF-8, strings longer
than the line limit, and bytes that are not JSON at all.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .fakes import make_deps
from .plan_helpers import plan_file

MAX_LINE_BYTES = 40_000


@dataclass(frozen=True)
class Raw:
    """JSON text written into a line as is (what `json.dumps` would refuse or change)."""

    text: bytes


def dump(value: Any) -> bytes:
    """JSON text of `value`, with `Raw` parts verbatim and integers of any size exact."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        members = (dump(str(k)) + b":" + dump(v) for k, v in value.items())
        return b"{" + b",".join(members) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(dump(v) for v in value) + b"]"
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def nested(depth: int, inner: bytes) -> Raw:
    opener, closer = (b'{"k":', b"}") if depth % 2 else (b"[", b"]")
    return Raw(opener * depth + inner + closer * depth)


WEIRD = st.sampled_from(
    [
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"1e999",
        b"-0",
        b"1E+400",
        b'"\\ud800"',
        b'"x\\udc00y"',
        b'"\\ud83d\\ude00"',
        b"18446744073709551615",
        b"18446744073709551616",
        b"-9223372036854775809",
        b"1" + b"0" * 100,
        b"12345678901234567890.5",
        b'"\xff\xfe"',
        b'"\xc3"',
        b'"\xe2\x80\xa8"',
        b"tru",
        b"[,]",
    ]
).map(Raw)

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    WEIRD,
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
DEEP = st.builds(nested, st.integers(min_value=0, max_value=400), st.just(b'"bottom"'))
LONG = st.builds(
    lambda n, char: "x" * n + char, st.integers(0, 2 * MAX_LINE_BYTES), st.sampled_from("aü😀")
)
MODELS = st.sampled_from(
    [
        "openai/gpt-4o-mini",
        "openai/gpt-4.1-mini-2025-04-14",
        "openai/ft:gpt-4o-mini:org::a_b",
        "anthropic/claude-haiku-4-5",
        "anthropic/claude-sonnet-4-5@20250929",
        "vertex/gemini-2.5-flash",
        "vertex/publishers/google/models/gemini-2.5-pro",
        "vertex/../../../projects/other-project/locations/x/models/y",
        "openai/gpt 4",
        "acme/x",
        "gpt-4o-mini",
        "claude x",
        "../x",
    ]
)
ANY = st.one_of(VALUES, DEEP, DEEP, LONG, WEIRD, MODELS)

USER = {"role": "user", "content": "hi"}
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
# Valid lines of each format, and the places a mutation may change (a new key included).
TEMPLATES: list[tuple[dict[str, Any], list[tuple[Any, ...]]]] = [
    (
        {
            "custom_id": "b",
            "model": "openai/gpt-4o-mini",
            "messages": [USER],
            "max_tokens": 5,
            "response_schema": SCHEMA,
        },
        [
            ("custom_id",),
            ("model",),
            ("messages", 0, "content"),
            ("messages", 0, "role"),
            ("max_tokens",),
            ("temperature",),
            ("stop",),
            ("metadata",),
            ("response_schema",),
            ("response_schema", "properties", "n"),
            ("system",),
        ],
    ),
    (
        {"custom_id": "a", "model": "anthropic/claude-haiku-4-5", "messages": [USER]},
        [
            ("model",),
            ("messages", 0, "content"),
            ("messages", 1),
            ("stop",),
            ("response_schema",),
            ("metadata",),
        ],
    ),
    (
        {"custom_id": "v", "model": "vertex/gemini-2.5-flash", "messages": [USER]},
        [("model",), ("messages", 0, "content"), ("temperature",), ("response_schema",)],
    ),
    (
        {
            "custom_id": "o",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [USER], "seed": 1},
        },
        [
            ("custom_id",),
            ("body", "model"),
            ("body", "seed"),
            ("body", "n"),
            ("body", "max_completion_tokens"),
            ("body", "tools"),
            ("body", "response_format"),
            ("body", "messages", 0, "content"),
            ("body", "extra"),
        ],
    ),
    (
        {
            "custom_id": "p",
            "params": {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [USER]},
        },
        [
            ("params", "model"),
            ("params", "max_tokens"),
            ("params", "messages", 0, "content"),
            ("params", "tools"),
            ("params", "tool_choice"),
            ("params", "system"),
            ("params", "extra"),
        ],
    ),
    (
        {
            "key": "k",
            "request": {
                "model": "gemini-2.5-flash",
                "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "generationConfig": {"maxOutputTokens": 5},
            },
        },
        [
            ("key",),
            ("custom_id",),
            ("request", "model"),
            ("request", "contents", 0, "parts", 0, "text"),
            ("request", "contents", 0, "parts", 0, "inlineData"),
            ("request", "generationConfig", "maxOutputTokens"),
            ("request", "generationConfig", "responseMimeType"),
            ("request", "generationConfig", "responseSchema"),
            ("request", "labels"),
            ("request", "tools"),
        ],
    ),
]
_DELETE = object()


def mutate(line: Any, path: tuple[Any, ...], value: Any) -> None:
    """Set (or delete) `path` in `line`, where the containers on the way still exist."""
    for step in path[:-1]:
        found = (isinstance(line, dict) and step in line) or (
            isinstance(line, list) and isinstance(step, int) and step < len(line)
        )
        if not found:
            return
        line = line[step]
    last = path[-1]
    if isinstance(line, dict):
        if value is _DELETE:
            line.pop(last, None)
        else:
            line[last] = value
    elif isinstance(line, list) and isinstance(last, int):
        if last < len(line):
            line[last] = value if value is not _DELETE else None
        elif value is not _DELETE:
            line.append(value)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid line of one format with up to three of its fields changed or removed."""
    template, places = draw(st.sampled_from(TEMPLATES))
    line = copy.deepcopy(template)
    line["key" if "key" in line else "custom_id"] = str(draw(st.integers(0, 10**9)))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        value = draw(st.one_of(ANY, st.just(_DELETE)))
        mutate(line, draw(st.sampled_from(places)), value)
    return dump(line)


def spliced(line: bytes, junk: bytes, at: int) -> bytes:
    at %= len(line) + 1
    return line[:at] + junk + line[at:]


LINES = st.one_of(
    mutated(),
    mutated(),
    mutated(),
    st.builds(
        spliced, mutated(), st.sampled_from([b"\xff", b"\xc3", b"\x00", b'"']), st.integers()
    ),
    VALUES.map(dump),
    st.binary(max_size=64),
)
GOOD = b'{"custom_id": "first", "model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(LINES, min_size=1, max_size=6))
def test_no_line_stops_planning_and_every_line_comes_out_once(lines: list[bytes]) -> None:
    deps, _, _ = make_deps()
    deps.settings = replace(deps.settings, max_line_bytes=MAX_LINE_BYTES)
    # A first line that is not UTF-8 rejects the file (another encoding): keep it good.
    raw = [GOOD, *(line.replace(b"\n", b" ") for line in lines)]
    expected = {n for n, line in enumerate(raw, start=1) if line.strip()}

    planned = plan_file(deps, b"\n".join(raw) + b"\n")

    chunked = planned.chunked_lines
    assert len(chunked) == len(set(chunked)), "a line was chunked twice"
    assert set(chunked).isdisjoint(planned.invalid)
    assert set(chunked) | set(planned.invalid) == expected
    assert planned.plan.lines == len(expected)
    assert planned.plan.requests == len(chunked) and planned.plan.invalid == len(planned.invalid)
    for number, record in planned.invalid.items():
        assert record["line"] == number and record["status"] == "invalid"
        assert isinstance(record["custom_id"], str) and record["custom_id"]
