"""The GCS adapter's reader cuts lines itself (BlobReader has no peek, so io's readline
would read it a byte a call): it must read exactly as a plain binary file does."""

from __future__ import annotations

import io
import random

import pytest

from batchline.adapters import gcs
from batchline.adapters.gcs import _TranslatedReader


@pytest.mark.parametrize("ahead", [1, 2, 3, 7, 64, 1000])
def test_reads_and_lines_as_a_binary_file(monkeypatch: pytest.MonkeyPatch, ahead: int) -> None:
    monkeypatch.setattr(gcs, "LINE_READ_BYTES", ahead)
    rng = random.Random(ahead)
    for _ in range(100):
        data = b"".join(
            b"x" * rng.randint(0, 20) + (b"\n" if rng.random() < 0.9 else b"")
            for _ in range(rng.randint(0, 40))
        )
        ours, plain = _TranslatedReader(io.BytesIO(data), "reading"), io.BytesIO(data)
        while plain.tell() < len(data):
            op, n = rng.choice(["readline", "readline n", "read n", "read"]), rng.randint(0, 15)
            for reader, got in ((ours, []), (plain, [])):
                got.append(
                    reader.readline()
                    if op == "readline"
                    else reader.readline(n)
                    if op == "readline n"
                    else reader.read(n)
                    if op == "read n"
                    else reader.read()
                )
                if reader is ours:
                    mine = got[0]
                else:
                    assert mine == got[0], (op, n)
        assert ours.read() == b"" and ours.readline() == b""


def test_iterates_lines() -> None:
    data = b"a\nbb\n\nccc"
    assert list(_TranslatedReader(io.BytesIO(data), "reading")) == [b"a\n", b"bb\n", b"\n", b"ccc"]
