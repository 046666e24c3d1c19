"""A chunk's payload (`chunks/<n>/input.jsonl`, and a repair's staged `repairs.jsonl`): its
requests as its provider's batch input, one encoded request a line.

The lines are the provider's own format: its encoder writes them (`domain/providers/`),
the chunk planner cuts them into chunks, its client sends them (Vertex AI reads the file
in place) and its repair turn rewrites one for a repair. This module only stores them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from batchline.domain.workfiles._io import JSONL, WorkBlobs


def write_payload(blobs: WorkBlobs, uri: str, lines: bytes) -> bool:
    """Create the payload at `uri` (its lines, each with its newline); False when it
    exists already (an earlier invocation wrote the same bytes)."""
    return blobs.write_bytes(uri, lines, JSONL)


@contextmanager
def open_payload(blobs: WorkBlobs, uri: str) -> Iterator[Iterator[bytes]]:
    """The payload's lines at `uri` (each with its newline), read as a stream."""
    with blobs.open_read(uri) as stream:
        yield iter(stream)
