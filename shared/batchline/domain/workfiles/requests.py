"""The requests of a chunk as planning accepted them, before any provider's encoding.

`requests/<round>/<first line>.jsonl`, one file per chunk (`Chunk.requests_uri`), one row
per request in payload order (so in step with the chunk's manifest). A later round reads
it to send a line again, to this provider or, for a batchline line, to another:

- a batchline (provider-neutral) line is a `NeutralRequest`: its provider and model, its
  provider-neutral `params` and its schema's digest, from which `to_request` rebuilds
  exactly the `Request` planning encoded;
- a provider-native line is a `NativeRequest`: only where it came from, because its body
  is its provider's own. It can be sent again only to that provider, from the payload.

Planning writes the rows as it plans (the file streams out while its chunk fills, so
memory stays near one chunk's payload); readers stream them back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from batchline.domain.requests import Request
from batchline.domain.schemas import ResponseSchema
from batchline.domain.workfiles._io import JSONL, Fields, StreamedFile, WorkBlobs, WorkFileError

_APPEND_NEWLINE = orjson.OPT_APPEND_NEWLINE
NEUTRAL = "neutral"
NATIVE = "native"


@dataclass(frozen=True, slots=True)
class NeutralRequest:
    """A batchline line's request: everything but its schema as planning parsed it, and
    the schema by digest (`schemas/<digest>.json` of the job)."""

    line: int
    custom_id: str | None
    provider: str
    model: str
    params: dict[str, Any]
    schema: str | None = None
    #: The line's own failover chain (`Request.fallback`: `model: auto` picks one).
    fallback: tuple[str, ...] = ()
    selected_by: str | None = None

    def to_request(self, schemas: Callable[[str], ResponseSchema]) -> Request:
        """The `Request` planning made of the line; `schemas` finds a schema by digest."""
        schema = schemas(self.schema) if self.schema is not None else None
        return Request(
            self.line,
            self.custom_id,
            self.provider,
            self.model,
            params=self.params,
            schema=schema,
            fallback=self.fallback,
            selected_by=self.selected_by,
        )


@dataclass(frozen=True, slots=True)
class NativeRequest:
    """A provider-native line: it stays with its provider (its body is that provider's own,
    in the chunk's payload); no other provider can be asked it."""

    line: int
    custom_id: str | None
    provider: str
    model: str

    #: Why a native line cannot go to another provider, for the line's error.
    CANNOT_MOVE = "a provider-native line can only be sent to its own provider"


StoredRequest = NeutralRequest | NativeRequest


def encode_request(request: Request) -> bytes:
    """One row for `request` (with its newline), as planning stages it."""
    row: dict[str, Any] = {
        "line": request.line,
        "custom_id": request.custom_id,
        "provider": request.provider,
        "model": request.model,
    }
    if request.native is not None:
        row["kind"] = NATIVE
    else:
        row["kind"] = NEUTRAL
        row["schema"] = request.schema.digest if request.schema is not None else None
        row["params"] = request.params
        if request.fallback:
            row["fallback"] = list(request.fallback)
        if request.selected_by is not None:
            row["selected_by"] = request.selected_by
    return orjson.dumps(row, option=_APPEND_NEWLINE)


def stream_stored(blobs: WorkBlobs, uri: str) -> StreamedFile:
    """The requests file at `uri`, written row by row as its chunk fills (see
    `StreamedFile`: `commit` when the chunk is cut)."""
    return StreamedFile(blobs, uri, JSONL)


def write_stored(blobs: WorkBlobs, uri: str, rows: bytes) -> bool:
    """Create the requests file at `uri` from its rows at once; False when it exists."""
    return blobs.write_bytes(uri, rows, JSONL)


def decode_stored(raw: bytes, uri: str, number: int) -> StoredRequest:
    """Row `number` (from 1) of the requests file at `uri`; raises `WorkFileError` naming
    the row and field when it is not a stored request."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        shown = raw[:60].decode("utf-8", "replace")
        raise WorkFileError(uri, f"row {number}", f"not JSON: {shown!r}") from None
    row = Fields(data, uri, f"row {number}")
    line, provider, model = row.integer("line"), row.text("provider"), row.text("model")
    custom_id = row.optional_text("custom_id")
    which = row.text("kind")
    if which == NATIVE:
        return NativeRequest(line, custom_id, provider, model)
    if which != NEUTRAL:
        raise row.error("kind", f"expected {NEUTRAL!r} or {NATIVE!r}, got {which!r}")
    fallback = row.optional_array("fallback") or []
    for k, name in enumerate(fallback):
        if not isinstance(name, str):
            raise row.error(f"fallback[{k}]", "expected a 'provider/model' name")
    return NeutralRequest(
        line,
        custom_id,
        provider,
        model,
        row.mapping("params"),
        row.optional_text("schema"),
        tuple(fallback),
        row.optional_text("selected_by"),
    )


def iter_stored(rows: Iterable[bytes], uri: str) -> Iterator[StoredRequest]:
    """The stored requests of a requests file's rows, in order (streamed)."""
    for number, raw in enumerate(rows, 1):
        yield decode_stored(raw, uri, number)


@contextmanager
def open_stored(blobs: WorkBlobs, uri: str) -> Iterator[Iterator[StoredRequest]]:
    """The stored requests of the file at `uri`, read as a stream (one row at a time)."""
    with blobs.open_read(uri) as stream:
        yield iter_stored(stream, uri)


@contextmanager
def open_rows(blobs: WorkBlobs, uri: str | None) -> Iterator[Iterator[bytes]]:
    """The rows of the requests file at `uri` as written (to copy, see `checked_row`),
    read as a stream; none when there is no file (`uri` None: a chunk planned before
    requests were stored)."""
    if uri is None:
        yield iter(())
        return
    with blobs.open_read(uri) as stream:
        yield iter(stream)


def checked_row(raw: bytes, uri: str, number: int, line: int) -> bytes:
    """Row `number` of the requests file at `uri`, unchanged, once it is known to be the
    stored request of input line `line` (the manifest's row of the same number)."""
    if not raw:
        raise WorkFileError(uri, f"row {number}", "missing: the file ends before the manifest")
    found = decode_stored(raw, uri, number).line
    if found != line:
        raise WorkFileError(
            uri, f"row {number}.line", f"expected {line} (the manifest's), got {found}"
        )
    return raw if raw.endswith(b"\n") else raw + b"\n"
