"""Vertex AI files, and files mixing all three providers, through the whole local stack:
fake-gcs-server → bridge → submit → the Vertex emulator (reading the staged chunk from and
writing its predictions to fake-gcs-server) and the others → poll → collect."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import orjson
import pytest

from batchline.domain.models import JobState
from tests.integration.vertex_types import request_line_problems

from .conftest import (
    ANTHROPIC_CHUNK_REQUESTS,
    CHUNK_REQUESTS,
    VERTEX_CHUNK_REQUESTS,
    VERTEX_ROWS_PER_FILE,
    Pipeline,
)
from .test_mixed_providers import (
    GPT4O,
    HAIKU,
    MINI,
    SONNET,
    anthropic_line,
    anthropic_native,
    custom_id_for,
    openai_line,
    openai_native,
    user,
    with_id,
)

pytestmark = pytest.mark.e2e

FLASH, PRO = "gemini-2.5-flash", "gemini-2.5-pro"


def vertex_line(text: str, custom_id: str | None) -> dict[str, Any]:
    obj = {
        "model": f"vertex/{FLASH}",
        "system": "Be brief.",
        "messages": [*user("Hello"), {"role": "assistant", "content": "Hi."}, *user(text)],
        "max_tokens": 80,
        "temperature": 0.4,
        "stop": ["\n\n"],
    }
    return with_id(obj, custom_id)


def vertex_native(text: str, custom_id: str | None) -> dict[str, Any]:
    request = {
        "model": PRO,
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "generationConfig": {"maxOutputTokens": 60, "topP": 0.9},
        "labels": {"team": "e2e"},
    }
    line: dict[str, Any] = {"request": request}
    if custom_id is not None:
        line["key"] = custom_id  # Vertex's own id field
    return line


#: Lines every provider's parser refuses, with the field each error names.
BAD_LINES: list[tuple[bytes, str]] = [
    (orjson.dumps({"request": {"contents": []}}), "request.contents"),
    (
        orjson.dumps({"model": f"vertex/{FLASH}", "messages": [{"role": "tool", "content": "x"}]}),
        "messages[0].role",
    ),
    (
        orjson.dumps({"request": {"model": PRO, "contents": user("x")}}),
        "request.contents[0].content",
    ),
    (orjson.dumps({**vertex_line("x", None), "stop": list("abcdef")}), "stop"),
    (orjson.dumps({"request": {"contents": [{"parts": [{"text": "x"}]}]}}), "request.model"),
    (orjson.dumps({**anthropic_line("x", None), "temperature": 0.3}), "temperature"),
    (
        orjson.dumps({"model": f"openai/{MINI}", "messages": [{"role": "robot", "content": "x"}]}),
        "messages[0].role",
    ),
    (b"{not json at all", "line"),
]
FORMATS = (
    ("openai", MINI, openai_line),
    ("openai", GPT4O, openai_native),
    ("anthropic", HAIKU, anthropic_line),
    ("anthropic", SONNET, anthropic_native),
    ("vertex", FLASH, vertex_line),
    ("vertex", PRO, vertex_native),
)
LIMITS = {
    "openai": CHUNK_REQUESTS,
    "anthropic": ANTHROPIC_CHUNK_REQUESTS,
    "vertex": VERTEX_CHUNK_REQUESTS,
}


def build(
    count: int, formats: tuple[tuple[str, str, Any], ...]
) -> tuple[bytes, list[dict[str, Any]]]:
    lines: list[bytes] = []
    expected: list[dict[str, Any]] = []
    for i in range(1, count + 1):
        custom_id = custom_id_for(i)
        if i % 25 == 0:
            raw, field = BAD_LINES[(i // 25) % len(BAD_LINES)]
            lines.append(raw)
            expected.append({"status": "invalid", "field": field, "provider": None})
            continue
        provider, model, make = formats[i % len(formats)]
        text = f"Question {i}: what is {i} squared?"
        failing = i % 31 == 0
        if failing:
            text += " [emulator:fail=500]"
        lines.append(orjson.dumps(make(text, custom_id)))
        expected.append(
            {
                "status": "failed" if failing else "succeeded",
                "custom_id": custom_id or f"line-{i}",
                "provider": provider,
                "model": model,
            }
        )
    return b"\n".join(lines) + b"\n", expected


def check(pipeline: Pipeline, job_id: str, expected: list[dict[str, Any]]) -> Any:
    job = pipeline.wait(job_id, timeout=150)
    results = pipeline.results(job)
    assert len(results) == len(expected)
    assert [r["line"] for r in results] == list(range(1, len(expected) + 1))
    for n, (result, want) in enumerate(zip(results, expected, strict=True), start=1):
        assert result["status"] == want["status"], (n, result)
        assert result["provider"] == want["provider"], (n, result)
        if want["status"] == "invalid":
            assert result["error"]["field"] == want["field"], (n, result["error"])
            continue
        assert result["custom_id"] == want["custom_id"], (n, result)
        assert result["model"] == want["model"]
        if want["status"] == "failed":
            assert result["error"]["retryable"] is True and result["response"] is not None
            continue
        assert f"[batchline {want['provider']} emulator]" in result["output"]["text"]
        assert result["usage"]["input_tokens"] > 0 and result["cost_usd"] > 0
        if want["provider"] == "vertex":
            assert result["output"]["finish_reason"] in ("STOP", "MAX_TOKENS")
            assert result["response"]["candidates"][0]["content"]["role"] == "model"
    counts = Counter(r["status"] for r in results)
    assert pipeline.summary(job)["counts"] == dict(counts)
    assert job.state is JobState.PARTIAL

    chunks = pipeline.store.get_chunks(job_id)
    per_group = Counter((c.provider, c.model) for c in chunks)
    valid = Counter((e["provider"], e["model"]) for e in expected if e["status"] != "invalid")
    assert per_group == {k: math.ceil(n / LIMITS[k[0]]) for k, n in valid.items()}
    assert len({c.batch_id for c in chunks}) == len(chunks)

    # Each Vertex chunk is one job over the staged chunk, its output in several files, and
    # every request the adapter wrote is a GenerateContentRequest.
    vertex_chunks = {c.batch_id: c for c in chunks if c.provider == "vertex"}
    jobs = {j["id"]: j for j in pipeline.vertex_jobs(job_id)}
    assert set(jobs) == set(vertex_chunks)
    split = False
    for name, chunk in vertex_chunks.items():
        vjob = jobs[name]
        assert vjob["inputConfig"]["gcsSource"]["uris"] == [chunk.payload_uri]
        assert vjob["labels"] == {"batchline_job": job_id, "batchline_chunk": str(chunk.index)}
        files = vjob["emulator"]["output_files"]
        assert len(files) == math.ceil(chunk.request_count / VERTEX_ROWS_PER_FILE)
        split = split or len(files) > 1
        received = pipeline.vertex_requests(name)
        assert len(received) == chunk.request_count
        assert [p for r in received for p in request_line_problems({"request": r})] == []
    assert split, "no Vertex output was split across several prediction files"
    return results


def test_a_vertex_file_comes_back_complete_and_in_order(pipeline: Pipeline) -> None:
    data, expected = build(900, FORMATS[4:])
    # No retries: the failing lines fail once, in the first round (test_failover.py).
    job_id, _ = pipeline.upload("e2e/vertex.jsonl", data, metadata={"max_retries": "0"})
    results = check(pipeline, job_id, expected)
    assert {r["provider"] for r in results} == {"vertex", None}
    assert sum(1 for c in pipeline.store.get_chunks(job_id)) >= 3


def test_1500_lines_mixing_three_providers_come_back_in_order(pipeline: Pipeline) -> None:
    data, expected = build(1800, FORMATS)
    job_id, _ = pipeline.upload("e2e/three-providers.jsonl", data, metadata={"max_retries": "0"})
    results = check(pipeline, job_id, expected)
    assert {r["provider"] for r in results} == {"openai", "anthropic", "vertex", None}
    counts = Counter(r["status"] for r in results)
    assert counts["invalid"] == 72 and counts["failed"] > 40
    # The Vertex native lines' own `key` came back as their custom_id.
    natives = [r for r, e in zip(results, expected, strict=True) if e.get("model") == PRO]
    assert natives and all(
        r["custom_id"] == e
        for r, e in zip(
            natives, (e["custom_id"] for e in expected if e.get("model") == PRO), strict=True
        )
    )
