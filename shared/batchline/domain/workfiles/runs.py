"""Sorted runs of result lines: the invalid lines (`invalid.tsv`) and each collect attempt's
runs of a chunk's results (`chunks/<n>/collect-<attempt>/run-<k>.tsv`).

One row per result line, `<input line number>\\t<the line of results.jsonl>\\n`, sorted by
line number within a file, so that the final merge streams every run at once. Rows are
written and read as bytes: a result line is serialised once, when it is made, and copied
from here into results.jsonl untouched.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from batchline.domain.paths import WorkPaths
from batchline.domain.workfiles._io import TSV, WorkBlobs, WorkFileError

#: Bytes of rows held in memory before they are written out as one sorted run.
RUN_BYTES = 16 * 1024 * 1024


def encode_rows(rows: Iterable[tuple[int, bytes]]) -> bytes:
    """A run file's content from (line, result line with its newline), given in line order."""
    return b"".join([b"%d\t%b" % (line, record) for line, record in rows])


def write_invalid(blobs: WorkBlobs, paths: WorkPaths, rows: Iterable[tuple[int, bytes]]) -> bool:
    """Create invalid.tsv from (line, invalid result line) in line order; False when it
    exists already (an earlier planner's)."""
    return blobs.write_bytes(paths.invalid, encode_rows(rows), TSV)


class RunWriter:
    """Takes (line, result line) pairs in any order and writes them as sorted runs of at
    most about RUN_BYTES each, under one collect attempt's own names (`attempt`), so that
    the runs of two attempts never mix."""

    def __init__(self, blobs: WorkBlobs, paths: WorkPaths, index: int) -> None:
        self._blobs = blobs
        self._paths = paths
        self._index = index
        self.attempt = uuid.uuid4().hex[:12]
        self._buffer: list[tuple[int, bytes]] = []
        self._size = 0
        self.runs: list[str] = []

    def add(self, line: int, record: bytes) -> None:
        """Buffer one result line (with its newline); write a run when the buffer is full."""
        entry = b"%d\t%b" % (line, record)
        self._buffer.append((line, entry))
        self._size += len(entry)
        if self._size >= RUN_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        self._buffer.sort(key=lambda pair: pair[0])
        data = b"".join([entry for _, entry in self._buffer])
        self._buffer = []
        self._size = 0
        uri = self._paths.results_run(self._index, self.attempt, len(self.runs))
        self._blobs.write_bytes(uri, data, TSV)
        self.runs.append(uri)

    def finish(self) -> list[str]:
        """Write what is buffered; the URIs of every run written, in order."""
        self._flush()
        return self.runs


def iter_rows(rows: Iterable[bytes], uri: str, run: int) -> Iterator[tuple[int, int, bytes]]:
    """(line, `run`, result line) of each row, in file order: of equal lines in a merge, the
    later run's sorts last. Raises `WorkFileError` at a row that is not `<line>\\t<...>`."""
    number = b""
    try:
        for raw in rows:
            number, _, record = raw.partition(b"\t")
            yield int(number), run, record
    except ValueError:
        shown = number[:40].decode("utf-8", "replace")
        raise WorkFileError(uri, "line", f"a row starts {shown!r}, not a line number") from None


@contextmanager
def open_rows(
    blobs: WorkBlobs, uri: str, run: int, buffer_bytes: int | None = None
) -> Iterator[Iterator[tuple[int, int, bytes]]]:
    """The rows of the run at `uri`, streamed (see `iter_rows`); `buffer_bytes` bounds
    each fetch (a merge holds every run open at once)."""
    with blobs.open_read(uri, buffer_bytes=buffer_bytes) as stream:
        yield iter_rows(stream, uri, run)
