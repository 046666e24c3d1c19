import itertools
import random

import orjson
import pytest

from batchline.domain.jsonscan import TopLevelIdScanner, integer_out_of_range


def scan(data: bytes, pieces: list[int] | None = None) -> str | None:
    """The id the scanner finds, fed `data` whole or cut at the `pieces` offsets."""
    scanner = TopLevelIdScanner()
    cuts = [0, *(pieces or []), len(data)]
    for start, stop in itertools.pairwise(cuts):
        scanner.feed(data[start:stop])
    return scanner.custom_id


def every_split(data: bytes) -> set[str | None]:
    """What the scanner finds for every way of cutting `data` in two and in three."""
    found = {scan(data, [i]) for i in range(len(data) + 1)}
    found |= {scan(data, [i, j]) for i in range(0, len(data), 3) for j in range(i, len(data), 7)}
    return found


HUGE_DECOY = {
    "model": "openai/gpt-4.1-mini",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": 'say "custom_id": "no" } ] {' * 3},
                {"custom_id": "decoy-depth-3"},
            ],
        }
    ],
    "metadata": {"custom_id": "decoy-depth-2", "nested": [[{"custom_id": "deeper"}]]},
}


def test_id_at_the_start() -> None:
    line = orjson.dumps({"custom_id": "first", **HUGE_DECOY})
    assert every_split(line) == {"first"}


def test_id_after_a_huge_nested_value_with_decoys_at_depth_two() -> None:
    line = orjson.dumps({**HUGE_DECOY, "custom_id": "after-the-decoys"})
    assert every_split(line) == {"after-the-decoys"}


def test_id_split_across_pieces_of_a_large_line() -> None:
    blob = "QUJD" * 50_000  # a base64 document
    line = (
        orjson.dumps(
            {"messages": [{"role": "user", "content": blob}], "metadata": {"custom_id": "no"}}
        )[:-1]
        + b', "custom_id": "doc-\\"7\\" \\u00fc \\\\ end"}'
    )
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(line)), 40))
        assert scan(line, cuts) == 'doc-"7" ü \\ end'
    # each cut inside the id, including right after a backslash
    start = line.index(b'"doc-')
    for i in range(start, len(line)):
        assert scan(line, [i]) == 'doc-"7" ü \\ end'


def test_escaped_quotes_inside_strings_do_not_end_them() -> None:
    line = b'{"note": "a \\"custom_id\\": \\"x\\" \\\\", "custom_id": "id\\"q"}'
    assert orjson.loads(line)["custom_id"] == 'id"q'
    assert every_split(line) == {'id"q'}


@pytest.mark.parametrize(
    "line",
    [
        b'{"model": "openai/x", "messages": []}',
        b'{"metadata": {"custom_id": "nested only"}}',
        b'{"custom_id": 5, "key": "k", "request": {}}',
        b'{"custom_id": null}',
        b'{"custom_id": ["a"]}',
        b'{"custom_id": ""}',
        b'[{"custom_id": "in a list"}]',
        b'"custom_id"',
        b"",
        b"not json at all",
        b'{"custom_id": "no end',
        b'{"key": "vertex key but no request"}',
    ],
)
def test_absent_or_unusable_id_is_none(line: bytes) -> None:
    assert every_split(line) == {None}


def test_id_longer_than_512_characters_is_not_kept() -> None:
    assert scan(orjson.dumps({"custom_id": "x" * 513})) is None
    assert scan(orjson.dumps({"custom_id": "ü" * 512})) == "ü" * 512
    assert scan(orjson.dumps({"custom_id": "x" * 10_000, "key": "k", "request": {}})) is None


def test_vertex_key_serves_when_the_line_has_a_request_and_no_custom_id() -> None:
    line = orjson.dumps({"key": "v-1", "request": {"contents": [{"key": "nested"}]}})
    assert every_split(line) == {"v-1"}
    line = orjson.dumps({"request": {"contents": []}, "key": "v-2"})
    assert every_split(line) == {"v-2"}
    line = orjson.dumps({"key": "k", "custom_id": "c", "request": {}})
    assert every_split(line) == {"c"}


def test_whitespace_and_unicode_keys() -> None:
    line = b' \t{ "custom\\u005fid" :\n "spaced" , "x": 1}\r\n'
    assert every_split(line) == {"spaced"}


@pytest.mark.parametrize(
    ("raw", "path", "literal"),
    [
        (b'{"body": {"seed": 18446744073709551616}}', "body.seed", "18446744073709551616"),
        (b'{"max_tokens": 123456789012345678901234}', "max_tokens", "123456789012345678901234"),
        (b'{"a": [1, {"b": [2, -9223372036854775809]}]}', "a[1].b[1]", "-9223372036854775809"),
        (b'{"a": [[1, 2], [3], 99999999999999999999]}', "a[2]", "99999999999999999999"),
        (b'{"a\\"b": 20000000000000000000}', 'a"b', "20000000000000000000"),
    ],
)
def test_integer_beyond_64_bits_is_found_with_its_path(raw: bytes, path: str, literal: str) -> None:
    assert integer_out_of_range(raw) == (path, literal)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": 18446744073709551615, "b": -9223372036854775808}',  # orjson keeps these exact
        b'{"a": 1e30, "b": 12345678901234567890.5, "c": -1.5E+25}',  # floats as written
        b'{"text": "12345678901234567890123", "n": [1, 2, 3]}',  # digits in a string
        b'{"k12345678901234567890": true}',
    ],
)
def test_integers_orjson_keeps_and_floats_are_not_reported(raw: bytes) -> None:
    assert integer_out_of_range(raw) is None


def test_the_scan_gives_up_past_its_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """An adversarial line far over the limit costs bounded work; its id is then lost."""
    from batchline.domain import jsonscan

    line = b'{"pad": "' + b"p" * 5000 + b'", "custom_id": "late"}'
    assert scan(line) == "late"
    monkeypatch.setattr(jsonscan, "MAX_SCANNED_BYTES", 4096)
    assert scan(line, list(range(1000, len(line), 1000))) is None
    assert scan(b'{"custom_id": "early", "pad": "' + b"p" * 5000 + b'"}', [100]) == "early"
