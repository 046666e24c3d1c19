"""Splitting a streamed JSONL download into lines, for every provider adapter."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def jsonl_lines(parts: Iterable[bytes]) -> Iterator[bytes]:
    """The non-blank lines of a body that arrives in `parts` split anywhere."""
    pending = b""
    for part in parts:
        pending += part
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending
