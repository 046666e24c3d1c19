"""`batchline.read_results` on local files: typed successes and errors, line by line."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

import batchline
from batchline import BatchError, BatchSuccess, ResultsFileError, read_results


class Item(BaseModel):
    name: str
    price: float


class Invoice(BaseModel):
    number: str
    items: list[Item]


@dataclass
class Point:
    x: int
    y: int


def succeeded(
    custom_id: str, line: int, parsed: Any = None, *, text: str | None = None, **extra: Any
) -> dict[str, Any]:
    output: dict[str, Any] = {
        "text": text if text is not None else orjson.dumps(parsed).decode(),
        "finish_reason": "stop",
    }
    if parsed is not None:
        output["parsed"] = parsed
    return {
        "custom_id": custom_id,
        "line": line,
        "status": "succeeded",
        "provider": "openai",
        "model": "gpt-4.1-mini",
        "output": output,
        "usage": {"input_tokens": 10, "output_tokens": 5},
        "cost_usd": 0.0001,
        "error": None,
        "response": {"id": "resp"},
        "attempts": [{"n": 1}, {"n": 2}],
        **extra,
    }


def failed(custom_id: str, line: int, status: str, error: dict[str, Any]) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "line": line,
        "status": status,
        "provider": "openai",
        "model": "gpt-4.1-mini",
        "output": None,
        "usage": None,
        "cost_usd": None,
        "error": error,
        "response": None,
        "attempts": [{"n": 1}],
    }


INVOICE = {"number": "A-1", "items": [{"name": "tea", "price": 2.5}]}
RECORDS = [
    succeeded("inv-1", 1, INVOICE),
    failed(
        "inv-2",
        2,
        "failed",
        {
            "type": "schema_validation",
            "message": "'price' is a required property",
            "retryable": False,
            "path": "$.items[0]",
        },
    ),
    failed(
        "inv-3",
        3,
        "invalid",
        {
            "type": "invalid_request",
            "message": "line 3: messages: required",
            "retryable": False,
            "field": "messages",
        },
    ),
    succeeded("inv-4", 4, {"number": "A-4", "items": [{"name": "cup", "price": "cheap"}]}),
    failed("inv-5", 5, "expired", {"type": "expired", "message": "expired", "retryable": True}),
]


def write(path: Path, records: list[dict[str, Any]], *, gz: bool = False) -> Path:
    data = b"".join(orjson.dumps(r) + b"\n" for r in records)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_untyped_read_gives_parsed_objects_and_errors_in_order(tmp_path: Path) -> None:
    results = list(read_results(write(tmp_path / "results.jsonl", RECORDS)))

    assert [r.custom_id for r in results] == ["inv-1", "inv-2", "inv-3", "inv-4", "inv-5"]
    first = results[0]
    assert isinstance(first, BatchSuccess)
    assert first.parsed == INVOICE
    assert first.line == 1
    assert first.text == orjson.dumps(INVOICE).decode()
    assert first.usage == {"input_tokens": 10, "output_tokens": 5}
    assert first.cost_usd == 0.0001
    assert first.attempts == 2
    assert (first.provider, first.model, first.finish_reason) == ("openai", "gpt-4.1-mini", "stop")
    assert first.raw["response"] == {"id": "resp"}

    schema_error = results[1]
    assert isinstance(schema_error, BatchError)
    assert (schema_error.status, schema_error.error_type) == ("failed", "schema_validation")
    assert schema_error.path == "$.items[0]"
    assert schema_error.message == "'price' is a required property"
    assert schema_error.line == 2

    invalid = results[2]
    assert isinstance(invalid, BatchError)
    assert (invalid.status, invalid.error_type, invalid.path) == (
        "invalid",
        "invalid_request",
        "messages",
    )
    # Without a model, a success is what the line says, even when it would not fit one.
    assert isinstance(results[3], BatchSuccess)
    expired = results[4]
    assert isinstance(expired, BatchError)
    assert (expired.status, expired.retryable) == ("expired", True)


def test_success_without_a_schema_gives_the_text(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl", [succeeded("q1", 1, text="Hello.")])

    [result] = read_results(path)

    assert isinstance(result, BatchSuccess)
    assert result.parsed == "Hello."


def test_typed_read_validates_with_the_model(tmp_path: Path) -> None:
    results = list(read_results(write(tmp_path / "results.jsonl", RECORDS), Invoice))

    first = results[0]
    assert isinstance(first, BatchSuccess)
    assert isinstance(first.parsed, Invoice)
    assert first.parsed.items[0].price == 2.5

    # A success whose answer does not fit the model is an error, and reading goes on.
    misfit = results[3]
    assert isinstance(misfit, BatchError)
    assert misfit.status == "succeeded"
    assert misfit.error_type == "model_validation"
    assert misfit.path == "$.items[0].price"
    assert "Invoice" in misfit.message
    assert "$.items[0].price" in misfit.message
    assert misfit.raw["custom_id"] == "inv-4"
    assert [type(r).__name__ for r in results] == [
        "BatchSuccess",
        "BatchError",
        "BatchError",
        "BatchError",
        "BatchError",
    ]


def test_typed_read_parses_the_text_when_no_schema_applied(tmp_path: Path) -> None:
    records = [
        succeeded("ok", 1, text=orjson.dumps(INVOICE).decode()),
        succeeded("prose", 2, text="Sure! Here is your invoice."),
    ]

    ok, prose = read_results(write(tmp_path / "r.jsonl", records), Invoice)

    assert isinstance(ok, BatchSuccess)
    assert ok.parsed == Invoice.model_validate(INVOICE)
    assert isinstance(prose, BatchError)
    assert (prose.error_type, prose.path) == ("model_validation", "$")


def test_non_pydantic_types_go_through_a_type_adapter(tmp_path: Path) -> None:
    records = [succeeded("p1", 1, {"x": 1, "y": 2}), succeeded("p2", 2, {"x": "left", "y": 2})]

    good, bad = read_results(write(tmp_path / "r.jsonl", records), Point)

    assert isinstance(good, BatchSuccess)
    assert good.parsed == Point(1, 2)
    assert isinstance(bad, BatchError)
    assert bad.path == "$.x"


def test_gzip_file_is_read_by_its_content(tmp_path: Path) -> None:
    plain = list(read_results(write(tmp_path / "a.jsonl", RECORDS), Invoice))
    # Named like a plain file: the gzip magic, not the name, decides.
    for name in ("results.jsonl.gz", "results-copy.jsonl"):
        gz = list(read_results(write(tmp_path / name, RECORDS, gz=True), Invoice))
        assert gz == plain


def test_directory_means_its_results_file(tmp_path: Path) -> None:
    write(tmp_path / "results.jsonl", RECORDS)

    assert len(list(read_results(tmp_path))) == len(RECORDS)
    assert len(list(read_results(str(tmp_path)))) == len(RECORDS)


def test_blank_lines_bom_and_crlf_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    body = b"\xef\xbb\xbf" + orjson.dumps(RECORDS[0]) + b"\r\n\r\n" + orjson.dumps(RECORDS[1])
    path.write_bytes(body)

    assert [r.custom_id for r in read_results(path)] == ["inv-1", "inv-2"]


def test_line_that_is_not_json_names_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(orjson.dumps(RECORDS[0]) + b"\n\n" + b"{oops\n" + orjson.dumps(RECORDS[1]))
    results = read_results(path)

    assert next(results).custom_id == "inv-1"  # lines before the bad one come through
    with pytest.raises(ResultsFileError, match="line 3 is not JSON") as caught:
        next(results)
    assert caught.value.line_number == 3
    assert caught.value.source == str(path)


def test_line_that_is_not_an_object_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"[1, 2]\n")

    with pytest.raises(ResultsFileError, match="line 1 is not a result record"):
        list(read_results(path))


def test_missing_file_and_corrupt_gzip_are_errors(tmp_path: Path) -> None:
    with pytest.raises(
        ResultsFileError, match=r"cannot read .*nope\.jsonl: .*No such file"
    ) as missing:
        list(read_results(tmp_path / "nope.jsonl"))
    assert missing.value.line_number is None

    path = tmp_path / "r.jsonl.gz"
    path.write_bytes(gzip.compress(orjson.dumps(RECORDS[0]) + b"\n" * 2)[:-12] + b"junk" * 3)
    with pytest.raises(ResultsFileError, match=r"cannot read .*r\.jsonl\.gz at line 1: ") as caught:
        list(read_results(path))
    assert caught.value.line_number == 1


def test_reading_starts_lazily_and_closes_when_dropped(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl", RECORDS)
    results = read_results(tmp_path / "absent.jsonl")  # nothing opened yet: no error
    del results

    reader = read_results(path)
    assert next(reader).custom_id == "inv-1"
    reader.close()
    os.remove(path)  # nothing holds it


def test_yields_each_line_before_the_file_ends(tmp_path: Path) -> None:
    """Through a pipe the writer only writes line n+1 after line n came out of the
    reader: the whole file is never there to be loaded."""
    fifo = tmp_path / "results.jsonl"
    os.mkfifo(fifo)
    yielded = [threading.Event() for _ in range(5)]

    def writer() -> None:
        with open(fifo, "wb", buffering=0) as out:
            for n in range(5):
                out.write(orjson.dumps(succeeded(f"q{n}", n + 1, INVOICE)) + b"\n")
                if not yielded[n].wait(10):
                    return

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    seen = []
    for n, result in enumerate(read_results(fifo, Invoice)):
        assert isinstance(result, BatchSuccess)
        seen.append(result.custom_id)
        yielded[n].set()
    thread.join(10)
    assert seen == [f"q{n}" for n in range(5)]


def generated_lines(count: int) -> Iterator[bytes]:
    padding = "x" * 400
    for n in range(count):
        parsed = {"number": f"N-{n}", "items": [{"name": padding, "price": float(n)}]}
        yield orjson.dumps(succeeded(f"q{n}", n + 1, parsed)) + b"\n"


def test_memory_stays_flat_on_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:
        for chunk in generated_lines(30_000):
            out.write(chunk)
    size = sum(len(line) for line in generated_lines(30_000))
    assert size > 30 * 1024 * 1024

    tracemalloc.start()
    try:
        count = total = 0
        for result in read_results(path, Invoice):
            assert isinstance(result, BatchSuccess)
            count += 1
            total += int(result.parsed.items[0].price)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 30_000
    assert total == sum(range(30_000))
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes reading a {size}-byte file"


def test_import_batchline_stays_light() -> None:
    code = (
        "import sys, batchline\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('pydantic', 'orjson')"
        " or m.startswith(('google.cloud.storage', 'google.auth', 'batchline.reader'))]\n"
        "assert not heavy, heavy\n"
        "assert callable(batchline.read_results)\n"
        "assert 'read_results' in dir(batchline)\n"
        "assert 'pydantic' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = batchline.nothing_here  # type: ignore[attr-defined]
