import gzip
import io

import pytest

from batchline.domain.lines import LineTooLong, UnreadableInput, iter_lines


def lines(data: bytes, limit: int = 100) -> list[tuple[int, bytes | LineTooLong]]:
    return list(iter_lines(io.BytesIO(data), limit))


def test_splits_on_lf_only_keeping_unicode_separators_inside_strings() -> None:
    tricky = '{"a":"x\u2028y\u0085z\u2029"}'.encode()
    assert lines(tricky + b"\n" + b"{}\n") == [(1, tricky), (2, b"{}")]


def test_crlf_bom_and_missing_final_newline() -> None:
    assert lines(b"\xef\xbb\xbf{}\r\n[]\r\n3") == [(1, b"{}"), (2, b"[]"), (3, b"3")]


def test_blank_lines_keep_their_numbers() -> None:
    assert lines(b"a\n\n  \nb\n") == [(1, b"a"), (2, b""), (3, b"  "), (4, b"b")]


def test_too_long_line_is_reported_with_its_size_and_reading_goes_on() -> None:
    data = b"x" * 250 + b"\n" + b"ok\n" + b"y" * 101
    got = lines(data, limit=100)
    assert got == [(1, LineTooLong(250)), (2, b"ok"), (3, LineTooLong(101))]


def test_line_of_exactly_the_limit_is_kept() -> None:
    assert lines(b"z" * 100 + b"\r\n", limit=100) == [(1, b"z" * 100)]


def test_utf16_file_is_unreadable() -> None:
    with pytest.raises(UnreadableInput, match="UTF-16"):
        lines("{}\n".encode("utf-16"))


def test_reads_through_gzip_stream() -> None:
    packed = gzip.compress(b"{}\n{}\n")
    assert len(list(iter_lines(gzip.GzipFile(fileobj=io.BytesIO(packed)), 10))) == 2
