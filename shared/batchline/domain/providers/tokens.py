"""The parts of a request a provider bills as input, as each descriptor's `token_parts`
takes them out of an encoded line, and how its tokens are counted (`TokenRule`). Pure.

`domain/estimate.py` adds these up; the rules per provider are in the descriptors'
modules (see `domain/estimate.py`'s docstring for the sources of each number).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# OpenAI's documented chat overhead (also used, undocumented, for the other providers).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
#: For text whose tokens/character ratio nothing measured.
FALLBACK_CHARS_PER_TOKEN = 4.0


@dataclass(slots=True)
class RequestParts:
    """What one request bills as input, and the output it allows."""

    texts: list[str]
    fixed_tokens: int = 0  # overheads, images, tool prompts
    max_output: int | None = None  # as the request sets it
    choices: int = 1


@dataclass(frozen=True, slots=True)
class TokenRule:
    """How a provider's input tokens are counted for one model: with the tiktoken
    `encoding` when it has one, else `chars_per_token` characters per token."""

    encoding: str | None = None
    chars_per_token: float = FALLBACK_CHARS_PER_TOKEN


def compact_json(value: Any) -> str:
    """`value` as compact JSON text (tool and schema definitions count as that)."""
    return orjson.dumps(value).decode()


def positive_count(value: Any) -> int | None:
    """A positive whole number from a request field (Vertex may send int64s as strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else None


def either(obj: dict[str, Any], camel: str, snake: str) -> Any:
    """A field given in its JSON (`camel`) or proto (`snake`) spelling."""
    value = obj.get(camel)
    return obj.get(snake) if value is None else value
