"""Reading JSONL input safely: split on LF only, bounded line length, BOM and CRLF tolerated.

JSON strings may legally hold U+2028, U+0085 and friends, which `str.splitlines` would
split on; we work on bytes and split on b"\\n" alone.

Memory: at most one line is held (up to the limit), plus a small read buffer. A longer
line is skipped in pieces; a streaming scan of those pieces keeps its top-level
`custom_id`, so that the line's `invalid` result still names the user's id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from batchline.domain.jsonscan import TopLevelIdScanner
from batchline.errors import PermanentError

BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_READ_SIZE = 1 << 16


class UnreadableInput(PermanentError):
    """The file as a whole cannot be read (bad encoding, corrupt compression, empty)."""


class Readable(Protocol):
    """A binary stream read line by line (a file, a GCS reader, a gzip stream)."""

    def readline(self, size: int = -1, /) -> bytes:
        """The next line with its newline, at most `size` bytes; b"" at the end."""
        ...


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line over the limit: its size, and its top-level `custom_id` (or Vertex `key`)
    when it has one."""

    size: int
    custom_id: str | None = None


def iter_lines(stream: Readable, max_line_bytes: int) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """Yield (line number from 1, line without its terminator) or a `LineTooLong` marker.

    A line longer than `max_line_bytes` is skipped over in pieces, never held whole.
    """
    number = 0
    first = True
    while True:
        raw = stream.readline(max_line_bytes + 2)
        if not raw:
            return
        number += 1
        if first:
            first = False
            if raw.startswith(_UTF16_BOMS):
                raise UnreadableInput("the file is UTF-16; batchline reads UTF-8 JSONL")
            if raw.startswith(BOM):
                raw = raw[len(BOM) :]
        if not raw.endswith(b"\n") and len(raw) > max_line_bytes:
            scanner = TopLevelIdScanner()
            scanner.feed(raw)
            size = len(raw)
            while True:
                rest = stream.readline(_READ_SIZE)
                size += len(rest)
                scanner.feed(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield number, LineTooLong(size - (1 if rest.endswith(b"\n") else 0), scanner.custom_id)
            continue
        if raw.endswith(b"\n"):
            raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
        if len(raw) > max_line_bytes:
            scanner = TopLevelIdScanner()
            scanner.feed(raw)
            yield number, LineTooLong(len(raw), scanner.custom_id)
            continue
        yield number, raw
