"""Looking into raw JSON bytes without parsing them whole. Pure.

Two jobs need it, both off the hot path:
- A line over the size limit is skipped in pieces, never held whole. `TopLevelIdScanner`
  reads the pieces as they pass and keeps the line's top-level `custom_id` (or a Vertex
  line's `key`), so that the line's `invalid` result still carries the user's id.
- orjson reads an integer beyond the 64-bit range as a float, silently.
  `integer_out_of_range` finds such an integer in a line and names its path (`body.seed`),
  so that the line is refused rather than sent changed.

Both jump between the bytes that matter with compiled regular expressions: the body of a
JSON string (a base64 document, megabytes long) is skipped in one match, never byte by
byte in Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

#: The longest id kept, in characters (as `requests.MAX_CUSTOM_ID_CHARS`).
MAX_ID_CHARS = 512
# Raw bytes of an id of MAX_ID_CHARS characters: at most 12 bytes a character (an astral
# character written as two \uXXXX escapes).
_MAX_ID_BYTES = MAX_ID_CHARS * 12
# The keys worth keeping are short; a longer one is no key we look for.
_MAX_KEY_BYTES = 64

#: Past this many bytes of one line the scan gives up (the id is then not found): bounds
#: the work spent on an adversarial line (millions of tiny members) far over the limit.
MAX_SCANNED_BYTES = 256 * 1024 * 1024

_STRING_BODY = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)
_TOP_LEVEL = re.compile(rb'["{}\[\]:,]')
# Inside a nested value only brackets matter: skip everything else, whole strings
# included, in one match (an unterminated string stops it at its quote).
_NESTED_SKIP = re.compile(rb'(?:[^"{}\[\]]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.DOTALL)
_NOT_SPACE = re.compile(rb"[^ \t\r\n]")
_BACKSLASH = 0x5C
_QUOTE = 0x22

# What a top-level object expects next.
_KEY, _COLON, _VALUE, _COMMA = range(4)


class TopLevelIdScanner:
    """Finds the top-level `custom_id` (or Vertex `key`) string of one JSON object, fed in
    pieces of any size and split anywhere (inside a string, an escape, a nested value).

    Tracks only what that needs: nesting depth, whether it is inside a string, the key of
    the current top-level member, and the bytes of the one string it keeps (bounded). A
    `custom_id` nested deeper (inside `metadata`, a message, ...) is not the line's id.
    It never raises on malformed input; it just finds nothing.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escape = False  # the previous piece ended in the middle of an escape
        self._expect = _KEY
        self._string_is_key = False
        self._buffer: bytearray | None = None  # the string being kept, or None
        self._buffer_limit = 0
        self._member: str | None = None  # the key of the current top-level member
        self._custom_id_seen = False
        self._custom_id: str | None = None
        self._key: str | None = None
        self._has_request = False
        self._done = False
        self._scanned = 0

    @property
    def custom_id(self) -> str | None:
        """The line's id as `parse_line` would take it: `custom_id` when the line has one
        (None when it is not a usable string), else a Vertex line's (`request`) `key`."""
        if self._custom_id_seen:
            return self._custom_id
        return self._key if self._has_request else None

    def feed(self, piece: bytes) -> None:
        """Scan the next piece of an over-long line; stops looking after MAX_SCANNED_BYTES."""
        self._scanned += len(piece)
        if self._scanned > MAX_SCANNED_BYTES:
            self._done = True
        pos, end = 0, len(piece)
        while pos < end and not self._done:
            if self._in_string:
                pos = self._string(piece, pos, end)
            elif self._depth == 0:
                found = _NOT_SPACE.search(piece, pos)
                if found is None:
                    return
                if piece[found.start()] != ord("{"):
                    self._done = True  # not an object: it has no custom_id
                    return
                self._depth, self._expect, pos = 1, _KEY, found.end()
            elif self._depth == 1:
                pos = self._top_level(piece, pos)
            else:
                skipped = _NESTED_SKIP.match(piece, pos)
                pos = skipped.end() if skipped is not None else pos
                if pos == end:
                    return
                char = piece[pos]
                pos += 1
                if char == _QUOTE:  # a string the piece cuts: it goes on in the next one
                    self._start_string(keep=False)
                elif char in b"{[":
                    self._depth += 1
                else:
                    self._depth -= 1

    def _top_level(self, piece: bytes, pos: int) -> int:
        found = _TOP_LEVEL.search(piece, pos)
        if found is None:
            return len(piece)  # a number, true, false or null, perhaps cut by the piece
        char = piece[found.start()]
        if char == _QUOTE:
            if self._expect == _KEY:
                self._string_is_key = True
                self._start_string(keep=True, limit=_MAX_KEY_BYTES)
            else:
                self._string_is_key = False
                self._start_string(keep=self._member in ("custom_id", "key"))
        elif char == ord(":"):
            self._expect = _VALUE
        elif char == ord(","):
            self._value_was_not_a_string()
            self._expect = _KEY
        elif char in b"{[":
            self._value_was_not_a_string()
            self._depth = 2
            self._expect = _COMMA
        else:  # the top-level object ends (or a stray bracket): nothing more to find
            self._value_was_not_a_string()
            self._done = True
        return found.end()

    def _string(self, piece: bytes, pos: int, end: int) -> int:
        if self._escape:  # the byte after a backslash that ended the previous piece
            self._keep(piece[pos : pos + 1])
            self._escape = False
            return pos + 1
        body = _STRING_BODY.match(piece, pos)
        stop = body.end() if body is not None else pos
        self._keep(piece[pos:stop])
        if stop == end:
            return end  # the string goes on in the next piece
        if piece[stop] == _BACKSLASH:  # a backslash that is the piece's last byte
            self._keep(b"\\")
            self._escape = True
            return stop + 1
        self._end_string()
        return stop + 1

    def _start_string(self, *, keep: bool, limit: int = _MAX_ID_BYTES) -> None:
        self._in_string = True
        self._buffer = bytearray() if keep else None
        self._buffer_limit = limit

    def _keep(self, data: bytes) -> None:
        if self._buffer is None:
            return
        if len(self._buffer) + len(data) > self._buffer_limit:
            self._buffer = None  # too long to be what we look for
            return
        self._buffer += data

    def _end_string(self) -> None:
        self._in_string = False
        if self._depth != 1:
            return
        text = _decode(self._buffer)
        self._buffer = None
        if self._string_is_key:
            self._member = text
            if text == "request":
                self._has_request = True
            self._expect = _COLON
            return
        self._expect = _COMMA
        if self._member == "custom_id":
            self._custom_id_seen = True
            self._custom_id = text if text and len(text) <= MAX_ID_CHARS else None
            self._done = True
        elif self._member == "key" and self._key is None:
            self._key = text if text and len(text) <= MAX_ID_CHARS else None

    def _value_was_not_a_string(self) -> None:
        """Called where a top-level value ends or opens: when the value was not a string
        (a number, literal or container), a `custom_id` there is no usable id."""
        if self._expect == _VALUE and self._member == "custom_id":
            self._custom_id_seen = True
            self._custom_id = None
            self._done = True


def _decode(raw: bytearray | None) -> str | None:
    if raw is None:
        return None
    try:
        text = orjson.loads(b'"' + raw + b'"')
    except orjson.JSONDecodeError:
        return None
    return text if isinstance(text, str) else None


# ------------------------------------------------------------------ integers beyond 64 bits

_TOKEN = re.compile(
    rb'"[^"\\]*(?:\\.[^"\\]*)*"|-?[0-9][0-9.eE+-]*|[{}\[\],:]',
    re.DOTALL,
)
# orjson keeps integers from -2**63 to 2**64 - 1 exact, and reads any other as a float.
_MOST_NEGATIVE = b"9223372036854775808"
_MOST_POSITIVE = b"18446744073709551615"


@dataclass
class _Open:
    """A container the integer search is inside: an object's current key or an array's
    current index."""

    is_object: bool
    where: str | int
    wants_key: bool


def integer_out_of_range(raw: bytes) -> tuple[str, str] | None:
    """(path, literal) of the first integer in the JSON text `raw` that orjson cannot keep
    exact (outside -2**63 .. 2**64-1), or None. `raw` must be valid JSON (orjson read it).

    Paths read like the rest of batchline's errors: `body.seed`, `messages[0].content`.
    """
    stack: list[_Open] = []
    for match in _TOKEN.finditer(raw):
        token = match.group()
        first = token[0]
        top = stack[-1] if stack else None
        if first == _QUOTE:
            if top is not None and top.is_object and top.wants_key:
                inner = token[1:-1]
                top.where = _decode(bytearray(inner)) or inner.decode("utf-8", "replace")
                top.wants_key = False
        elif first == ord("{"):
            stack.append(_Open(True, "", True))
        elif first == ord("["):
            stack.append(_Open(False, 0, False))
        elif first in b"}]":
            if stack:
                stack.pop()
        elif first == ord(","):
            if top is not None and top.is_object:
                top.wants_key = True
            elif top is not None and isinstance(top.where, int):
                top.where += 1
        elif first != ord(":") and _beyond_64_bits(token):
            return _path(stack), token.decode("ascii", "replace")
    return None


def _beyond_64_bits(token: bytes) -> bool:
    negative = token[:1] == b"-"
    digits = token[1:] if negative else token
    if not digits.isdigit():
        return False  # a fraction or an exponent: a float as written
    limit = _MOST_NEGATIVE if negative else _MOST_POSITIVE
    return len(digits) > len(limit) or (len(digits) == len(limit) and digits > limit)


def _path(stack: list[_Open]) -> str:
    path = ""
    for open_ in stack:
        if open_.is_object:
            path = f"{path}.{open_.where}" if path else str(open_.where)
        else:
            path = f"{path}[{open_.where}]"
    return path or "line"
