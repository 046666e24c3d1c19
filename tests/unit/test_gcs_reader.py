"""The GCS adapter's reader finds lines in a buffer of its own: GCS's BlobReader has no
`readline`, and io's default one reads a byte at a time (a call per byte of the input)."""

from __future__ import annotations

import io

import pytest

from batchline.adapters.gcs import _TranslatedReader
from batchline.errors import RetryableError


class ReadOnly:
    """Like GCS's BlobReader as far as lines go: `read` only, every call counted."""

    def __init__(self, data: bytes, fail_at: int | None = None) -> None:
        self._stream = io.BytesIO(data)
        self.calls = 0
        self.fail_at = fail_at

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.fail_at is not None and self._stream.tell() >= self.fail_at:
            from google.api_core.exceptions import ServiceUnavailable

            raise ServiceUnavailable("storage is down")
        return self._stream.read(size)


DATA = b"".join(b'{"n": %d, "pad": "%s"}\n' % (n, b"x" * (n % 300)) for n in range(20_000))


def reader(data: bytes = DATA, **kw: object) -> tuple[_TranslatedReader, ReadOnly]:
    raw = ReadOnly(data, **kw)  # type: ignore[arg-type]
    return _TranslatedReader(raw, "reading gs://b/o"), raw  # type: ignore[arg-type]


def test_lines_come_whole_and_in_order_with_few_reads() -> None:
    lines, raw = reader()
    assert list(lines) == DATA.splitlines(keepends=True)
    # A piece per READ_PIECE_BYTES, not a call per byte.
    assert raw.calls <= len(DATA) // _TranslatedReader.READ_PIECE_BYTES + 3


def test_a_last_line_without_newline_and_an_empty_object() -> None:
    lines, _ = reader(b"a\nb")
    assert [lines.readline(), lines.readline(), lines.readline()] == [b"a\n", b"b", b""]
    empty, _ = reader(b"")
    assert empty.readline() == b"" and list(empty) == []


@pytest.mark.parametrize("limit", [0, 1, 5, 17, 10_000])
def test_readline_with_a_size_never_returns_more(limit: int) -> None:
    lines, _ = reader()
    got = lines.readline(limit)
    assert got == DATA.splitlines(keepends=True)[0][:limit]
    rest = lines.read()
    assert got + rest == DATA


def test_read_readline_and_readinto_mixed_see_every_byte_once() -> None:
    lines, _ = reader()
    parts = [lines.read(10), lines.readline(), lines.read(3)]
    buffer = bytearray(100)
    n = lines.readinto(buffer)
    parts.append(bytes(buffer[:n]))
    parts.append(lines.read())
    assert b"".join(parts) == DATA and lines.read() == b"" and lines.readline() == b""


def test_a_storage_failure_mid_object_is_retryable() -> None:
    lines, _ = reader(fail_at=100_000)
    with pytest.raises(RetryableError):
        list(lines)
