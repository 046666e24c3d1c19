"""Micro-benchmarks of the per-line hot paths (pytest-benchmark).

Not part of `make test`: run with `.venv/bin/python -m pytest bench/ --benchmark-only`.
Each benchmark processes the same 1,000 realistic lines (~2 KB each), so a round's time
divided by 1,000 is the cost of one line; `raw_pass_*` is the orjson floor for the same
lines, as in bench/run.py. The `validator_*` ones check 1,000 DocumentAnalysis answers
(~0.3-2 KB of JSON, 2% of them invalid) against their schema, as collect does.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from generate import (
    RESPONSE_SCHEMA,
    anthropic_results,
    provider_files,
    sample_input_lines,
    structured_object,
    structured_text,
    vertex_results,
)

from batchline.domain.lines import iter_lines
from batchline.domain.models import ProviderResult
from batchline.domain.pricing import PRICES, price_for
from batchline.domain.providers import anthropic as anthropic_wire
from batchline.domain.providers import openai as wire
from batchline.domain.providers import vertex as vertex_wire
from batchline.domain.requests import Request, parse_line
from batchline.domain.results import Tally, provider_result_line
from batchline.domain.schemas import ResponseSchema, Validator, openai_strict

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

    price = price_for(PRICES, "openai", "gpt-4.1-mini")

    def run() -> None:
        tally = Tally()
        for i, result in enumerate(results, 1):
            record, realtime = provider_result_line(
                custom_id=f"req-{i}",
                line=i,
                provider="openai",
                model="gpt-4.1-mini",
                result=result,
                price=price,
            )
            tally.add(record, realtime)
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


@pytest.fixture(scope="module")
def document_schema() -> ResponseSchema:
    schema = ResponseSchema.from_line_value(RESPONSE_SCHEMA)
    assert openai_strict(schema) is not None  # OpenAI sends it strict
    return schema


def _answers(nulls: bool = False, text: bool = True) -> list[Any]:
    import random

    from generate import _corpus

    rng = random.Random(7)
    corpus = _corpus(rng, 300_000)
    if not text:
        return [structured_object(rng, corpus)[0] for _ in range(N)]
    return [structured_text(rng, corpus, nulls=nulls)[0] for _ in range(N)]


@pytest.fixture(scope="module")
def document_texts() -> list[str]:
    """DocumentAnalysis answers as JSON text (Vertex; OpenAI without strict mode)."""
    return _answers()


def test_raw_pass_answers(benchmark: Any, document_texts: list[str]) -> None:
    """The orjson floor for the same answers (the few truncated ones fail to parse)."""
    answers = [text.encode() for text in document_texts]

    def run() -> None:
        for answer in answers:
            try:  # noqa: SIM105 - as bench/run.py's raw pass
                orjson.dumps(orjson.loads(answer))
            except orjson.JSONDecodeError:
                pass

    benchmark(run)


def test_validator_check(
    benchmark: Any, document_schema: ResponseSchema, document_texts: list[str]
) -> None:
    """Validator.check of JSON text: orjson.loads + the compiled validator."""
    validator = Validator(document_schema)

    def run() -> int:
        return sum(validator.check(text)[1] is None for text in document_texts)

    valid = benchmark(run)
    assert N * 0.95 < valid < N


def test_validator_check_strict(benchmark: Any, document_schema: ResponseSchema) -> None:
    """OpenAI strict mode: every property given, `null` for an optional one, stripped
    (`NullStripper`) before the validator runs."""
    texts = _answers(nulls=True)
    validator = Validator(document_schema, strip_nulls=True)

    def run() -> int:
        return sum(validator.check(text)[1] is None for text in texts)

    valid = benchmark(run)
    assert N * 0.95 < valid < N


def test_validator_check_structured(benchmark: Any, document_schema: ResponseSchema) -> None:
    """Anthropic: the tool_use block's `input`, already an object (no parsing)."""
    objects = _answers(text=False)
    validator = Validator(document_schema)

    def run() -> int:
        return sum(validator.check(None, value)[1] is None for value in objects)

    valid = benchmark(run)
    assert N * 0.95 < valid < N
