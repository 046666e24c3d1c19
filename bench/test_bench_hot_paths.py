"""Micro-benchmarks of the per-line hot paths (pytest-benchmark).

Not part of `make test`: run with `.venv/bin/python -m pytest bench/ --benchmark-only`.
Each benchmark processes the same 1,000 realistic lines (~2 KB each), so a round's time
divided by 1,000 is the cost of one line; `raw_pass_*` is the orjson floor for the same
lines, as in bench/run.py.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from generate import anthropic_results, provider_files, sample_input_lines, vertex_results

from batchline.domain.lines import iter_lines
from batchline.domain.models import ProviderResult
from batchline.domain.pricing import BATCH_PRICES
from batchline.domain.providers import anthropic as anthropic_wire
from batchline.domain.providers import openai as wire
from batchline.domain.providers import vertex as vertex_wire
from batchline.domain.requests import Request, parse_line
from batchline.domain.results import Tally, provider_result_line

N = 1_000
MAX_LINE = 1024 * 1024


@pytest.fixture(scope="module")
def input_lines() -> list[bytes]:
    return sample_input_lines(N)


@pytest.fixture(scope="module")
def requests_(input_lines: list[bytes]) -> list[Request]:
    parsed = [
        parse_line(i, raw, default_model=None, max_line_bytes=MAX_LINE)
        for i, raw in enumerate(input_lines, 1)
    ]
    assert all(isinstance(p, Request) for p in parsed)
    return parsed  # type: ignore[return-value]


@pytest.fixture(scope="module")
def output_lines(requests_: list[Request]) -> list[bytes]:
    payload = b"".join(wire.encode(r) for r in requests_)
    output, errors, _ = provider_files(payload, seed=7)
    return [line for line in (output + errors).splitlines() if line]


@pytest.fixture(scope="module")
def results(output_lines: list[bytes]) -> list[ProviderResult]:
    return [wire.normalise(orjson.loads(line)) for line in output_lines]


def _raw(lines: list[bytes]) -> None:
    for line in lines:
        orjson.dumps(orjson.loads(line))


def test_raw_pass_input(benchmark: Any, input_lines: list[bytes]) -> None:
    benchmark(_raw, input_lines)


def test_iter_lines(benchmark: Any, input_lines: list[bytes]) -> None:
    data = b"\n".join(input_lines) + b"\n"

    def run() -> int:
        return sum(1 for _ in iter_lines(io.BytesIO(data), MAX_LINE))

    assert benchmark(run) == N


def test_parse_line(benchmark: Any, input_lines: list[bytes]) -> None:
    def run() -> None:
        for i, raw in enumerate(input_lines, 1):
            parse_line(i, raw, default_model=None, max_line_bytes=MAX_LINE)

    benchmark(run)


def test_encode(benchmark: Any, requests_: list[Request]) -> None:
    def run() -> None:
        for request in requests_:
            wire.encode(request)

    benchmark(run)


def test_raw_pass_output(benchmark: Any, output_lines: list[bytes]) -> None:
    benchmark(_raw, output_lines)


def test_normalise(benchmark: Any, output_lines: list[bytes]) -> None:
    """orjson.loads + normalise: what the adapter does with every downloaded line."""

    def run() -> None:
        for line in output_lines:
            wire.normalise(orjson.loads(line))

    benchmark(run)


def test_result_line(benchmark: Any, results: list[ProviderResult]) -> None:
    """provider_result_line + Tally.add + orjson.dumps: collect_chunk's per-line work."""

    def run() -> None:
        tally = Tally()
        for i, result in enumerate(results, 1):
            record = provider_result_line(
                custom_id=f"req-{i}",
                line=i,
                provider="openai",
                model="gpt-4.1-mini",
                result=result,
                prices=BATCH_PRICES,
            )
            tally.add(record)
            orjson.dumps(record)

    benchmark(run)


@pytest.fixture(scope="module")
def anthropic_requests() -> list[Request]:
    parsed = [
        parse_line(i, raw, default_model=None, max_line_bytes=MAX_LINE)
        for i, raw in enumerate(sample_input_lines(N, provider="anthropic"), 1)
    ]
    assert all(isinstance(p, Request) for p in parsed)
    return parsed  # type: ignore[return-value]


@pytest.fixture(scope="module")
def anthropic_result_lines(anthropic_requests: list[Request]) -> list[bytes]:
    payload = b"".join(anthropic_wire.encode(r, 1024) for r in anthropic_requests)
    results, _ = anthropic_results(payload, seed=7)
    return [line for line in results.splitlines() if line]


def test_encode_anthropic(benchmark: Any, anthropic_requests: list[Request]) -> None:
    encode = anthropic_wire.make_encoder(1024)

    def run() -> None:
        for request in anthropic_requests:
            encode(request)

    benchmark(run)


def test_normalise_anthropic(benchmark: Any, anthropic_result_lines: list[bytes]) -> None:
    """orjson.loads + normalise of Anthropic result lines."""

    def run() -> None:
        for line in anthropic_result_lines:
            anthropic_wire.normalise(orjson.loads(line))

    benchmark(run)


@pytest.fixture(scope="module")
def vertex_requests() -> list[Request]:
    parsed = [
        parse_line(i, raw, default_model=None, max_line_bytes=MAX_LINE)
        for i, raw in enumerate(sample_input_lines(N, provider="vertex"), 1)
    ]
    assert all(isinstance(p, Request) for p in parsed)
    return parsed  # type: ignore[return-value]


@pytest.fixture(scope="module")
def vertex_rows(vertex_requests: list[Request]) -> list[bytes]:
    payload = b"".join(vertex_wire.encode(r) for r in vertex_requests)
    files, _ = vertex_results(payload, seed=7)
    return [line for data in files for line in data.splitlines() if line]


def test_encode_vertex(benchmark: Any, vertex_requests: list[Request]) -> None:
    def run() -> None:
        for request in vertex_requests:
            vertex_wire.encode(request)

    benchmark(run)


def test_raw_pass_vertex_rows(benchmark: Any, vertex_rows: list[bytes]) -> None:
    benchmark(_raw, vertex_rows)


def test_normalise_vertex(benchmark: Any, vertex_rows: list[bytes]) -> None:
    """orjson.loads + normalise of Vertex prediction rows (each echoes its request)."""

    def run() -> None:
        for line in vertex_rows:
            vertex_wire.normalise(orjson.loads(line))

    benchmark(run)
