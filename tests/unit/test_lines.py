import gzip
import io

import orjson
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


def test_too_long_line_keeps_its_custom_id_read_in_pieces() -> None:
    """The id comes after more than one 64 KiB piece of nested data holding decoys."""
    decoy = {"custom_id": "decoy", "text": 'x "custom_id": "no" ' * 10_000}
    line = orjson.dumps({"messages": [decoy], "metadata": decoy, "custom_id": "big-7"})
    assert len(line) > 3 * 65_536
    data = b'{"custom_id": "a"}\n' + line + b"\r\n" + b'{"custom_id": "c"}\n'
    got = lines(data, limit=1000)
    assert got == [
        (1, b'{"custom_id": "a"}'),
        (2, LineTooLong(len(line) + 1, "big-7")),
        (3, b'{"custom_id": "c"}'),
    ]


def test_too_long_line_without_an_id_and_one_just_over_the_limit() -> None:
    over = b'{"custom_id": "z", "pad": "' + b"p" * 80 + b'"}'
    assert lines(b'{"pad": "' + b"p" * 200 + b'"}\n' + over + b"\n", limit=len(over) - 1) == [
        (1, LineTooLong(211)),
        (2, LineTooLong(len(over), "z")),
    ]


def test_reading_a_too_long_line_holds_one_piece_at_a_time() -> None:
    """The reader asks the stream for at most the limit (+2) and then 64 KiB at a time."""
    asked: list[int] = []

    class Recording(io.BytesIO):
        def readline(self, size: int | None = -1, /) -> bytes:
            asked.append(-1 if size is None else size)
            return super().readline(size)

    line = b'{"custom_id": "q", "blob": "' + b"A" * 1_000_000 + b'"}'
    got = list(iter_lines(Recording(line + b"\n"), 5000))
    assert got == [(1, LineTooLong(len(line), "q"))]
    assert set(asked) == {5002, 65_536}
