"""A chunk's manifest: which input line each request of its payload is, in payload order.

`chunks/<n>/manifest.jsonl` for every chunk (a repair's staged `repairs-manifest.jsonl`
has the same rows). One JSON object a row: `line`, `custom_id` (null: none given, so a
generated one), `schema` (the digest of the answer's schema, `schemas/<digest>.json`),
and for a repair `attempts` (the attempts before it) and `previous` (the result line they
made, as a tally takes it back: `results.superseded`).

Collect reads every row of every chunk: the reader checks each row's fields at the cost
of a few type tests, and refuses a row (or a file) that is not a manifest's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

import orjson

from batchline.domain.workfiles._io import JSONL, WorkBlobs, WorkFileError, kind

_APPEND_NEWLINE = orjson.OPT_APPEND_NEWLINE


class ManifestEntry(NamedTuple):
    """One request of a chunk: its input line, its custom_id (None: the line gave none and
    the generated one applies), the digest of the schema its answer must match, and for
    a repair the attempts before this one and the result line they made."""

    line: int
    custom_id: str | None
    schema: str | None = None
    earlier: list[dict[str, Any]] | None = None
    previous: dict[str, Any] | None = None
    #: How the line's model was chosen when not by name ("auto"), for its result line.
    selected_by: str | None = None
    #: The line's own failover chain (`Request.fallback`); empty: the job's applies.
    fallback: tuple[str, ...] = ()

    def encode(self) -> bytes:
        """This entry as one manifest row (with its newline)."""
        return encode_entry(
            self.line,
            self.custom_id,
            self.schema,
            self.earlier,
            self.previous,
            self.selected_by,
            self.fallback,
        )


def encode_entry(
    line: int,
    custom_id: str | None,
    schema: str | None = None,
    earlier: list[dict[str, Any]] | None = None,
    previous: dict[str, Any] | None = None,
    selected_by: str | None = None,
    fallback: tuple[str, ...] = (),
) -> bytes:
    """One manifest row (with its newline); the planner's per-request call, so no tuple."""
    row: dict[str, Any] = {"line": line, "custom_id": custom_id}
    if schema is not None:
        row["schema"] = schema
    if selected_by is not None:
        row["selected_by"] = selected_by
    if fallback:
        row["fallback"] = fallback
    if earlier is not None:
        row["attempts"] = earlier
    if previous is not None:
        row["previous"] = previous
    return orjson.dumps(row, option=_APPEND_NEWLINE)


def iter_entries(rows: Iterable[bytes], uri: str) -> Iterator[ManifestEntry]:
    """The entries of a manifest's rows, in order; raises `WorkFileError` naming the row
    and field of the first that is not a manifest row."""
    digests: dict[str, str] = {}  # one string per schema, not one per row
    loads = orjson.loads
    for number, raw in enumerate(rows, 1):
        try:
            row = loads(raw)
            line = row["line"]
            custom_id = row["custom_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise _bad_row(uri, number, raw, exc) from None
        if type(line) is not int:
            raise WorkFileError(uri, f"row {number}.line", f"expected an integer, got {kind(line)}")
        if custom_id is not None and type(custom_id) is not str:
            raise WorkFileError(
                uri, f"row {number}.custom_id", f"expected a string or null, got {kind(custom_id)}"
            )
        schema = row.get("schema")
        if schema is not None:
            if type(schema) is not str:
                raise WorkFileError(
                    uri, f"row {number}.schema", f"expected a digest, got {kind(schema)}"
                )
            schema = digests.setdefault(schema, schema)
        earlier = row.get("attempts")
        previous = row.get("previous")
        selected_by = row.get("selected_by")
        if selected_by is not None and type(selected_by) is not str:
            raise WorkFileError(
                uri, f"row {number}.selected_by", f"expected a string, got {kind(selected_by)}"
            )
        fallback = _fallback(row.get("fallback"), uri, number)
        if earlier is None and previous is None:
            yield ManifestEntry(line, custom_id, schema, None, None, selected_by, fallback)
            continue
        if not isinstance(earlier, list):
            raise WorkFileError(
                uri, f"row {number}.attempts", f"expected an array, got {kind(earlier)}"
            )
        if not isinstance(previous, dict):
            raise WorkFileError(
                uri, f"row {number}.previous", f"expected an object, got {kind(previous)}"
            )
        yield ManifestEntry(line, custom_id, schema, earlier, previous, selected_by, fallback)


def _fallback(value: Any, uri: str, number: int) -> tuple[str, ...]:
    """A row's `fallback`: absent, or a list of `provider/model` names."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(type(v) is str for v in value):
        raise WorkFileError(uri, f"row {number}.fallback", "expected an array of model names")
    return tuple(value)


def parse_manifest(
    data: bytes, uri: str, collisions: Mapping[int, str] | None = None
) -> dict[int, ManifestEntry]:
    """A whole manifest by line, in payload order, every custom_id resolved: a generated
    one is `line-<n>`, or its collision-free id from `collisions` (the plan record's)."""
    found: dict[int, ManifestEntry] = {}
    collisions = collisions or {}
    rows = data.splitlines()  # orjson writes no raw CR or LF inside a row
    for entry in iter_entries(rows, uri):
        if entry.custom_id is None:
            generated = collisions.get(entry.line) or f"line-{entry.line}"
            entry = entry._replace(custom_id=generated)
        found[entry.line] = entry
    if len(found) != len(rows):
        raise WorkFileError(uri, "line", "a line appears in more than one row")
    return found


def write_manifest(blobs: WorkBlobs, uri: str, rows: bytes) -> bool:
    """Create the manifest at `uri` from its encoded rows; False when it exists already."""
    return blobs.write_bytes(uri, rows, JSONL)


def read_manifest(
    blobs: WorkBlobs, uri: str, collisions: Mapping[int, str] | None = None
) -> dict[int, ManifestEntry]:
    """Read the manifest at `uri` (see `parse_manifest`)."""
    return parse_manifest(blobs.read_bytes(uri), uri, collisions)


@contextmanager
def open_manifest(blobs: WorkBlobs, uri: str) -> Iterator[Iterator[ManifestEntry]]:
    """The entries of the manifest at `uri`, in order, read as a stream (ids unresolved)."""
    with blobs.open_read(uri) as stream:
        yield iter_entries(stream, uri)


def _bad_row(uri: str, number: int, raw: bytes, exc: Exception) -> WorkFileError:
    if isinstance(exc, KeyError):
        return WorkFileError(uri, f"row {number}.{exc.args[0]}", "missing")
    shown = raw[:60].decode("utf-8", "replace")
    return WorkFileError(uri, f"row {number}", f"not a manifest row: {shown!r}")
