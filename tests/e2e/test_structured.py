"""Structured outputs through the whole local stack, on all three providers: answers
validated on collect, invalid first answers repaired in follow-up batches, typed reading."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import jsonschema
import orjson
import pytest
from pydantic import BaseModel, Field

import batchline
from batchline.domain.models import JobState
from batchline.domain.paths import registered_schema_uri

from .conftest import Pipeline

pytestmark = pytest.mark.e2e


class Sentiment(enum.StrEnum):
    positive = "positive"
    neutral = "neutral"
    negative = "negative"


class Entity(BaseModel):
    name: str
    kind: Literal["person", "organisation", "place"]
    salience: float = Field(ge=0, le=1)


class Section(BaseModel):
    heading: str
    page: int = Field(ge=1, le=500)
    keywords: list[str] = Field(max_length=5)


class DocumentAnalysis(BaseModel):
    title: str
    language: str
    sentiment: Sentiment
    confidence: float = Field(ge=0, le=1)
    entities: list[Entity]
    sections: list[Section] = Field(min_length=1)
    summary: str | None = None


SCHEMA = DocumentAnalysis.model_json_schema()
MODELS = ["openai/gpt-4.1-mini", "anthropic/claude-haiku-4-5", "vertex/gemini-2.5-flash"]
LINES = 600


def extraction_file() -> bytes:
    """600 lines over three providers; a third name the registered schema, the rest give it
    inline; all ask for a DocumentAnalysis of a made-up document."""
    rows = []
    for i in range(LINES):
        row: dict[str, Any] = {
            "custom_id": f"doc-{i:03d}",
            "model": MODELS[i % 3],
            "messages": [{"role": "user", "content": f"Analyse document #{i}: ..."}],
            "max_tokens": 400,
        }
        if i % 3 == 0:
            row["schema"] = "DocumentAnalysis"
        else:
            row["response_schema"] = {"name": "DocumentAnalysis", "schema": SCHEMA}
        rows.append(orjson.dumps(row))
    return b"\n".join(rows) + b"\n"


@pytest.fixture
def invalid_first_answers(pipeline: Pipeline, all_emulator_defaults: Callable[..., None]) -> None:
    all_emulator_defaults(invalid_answer_rate=0.1)
    pipeline.blobs.write_bytes(
        registered_schema_uri(pipeline.settings.work_bucket, "DocumentAnalysis"),
        orjson.dumps(SCHEMA),
        "application/json",
    )


def run(pipeline: Pipeline, name: str, metadata: dict[str, str] | None = None) -> Any:
    job_id, _ = pipeline.upload(name, extraction_file(), metadata=metadata)
    job = pipeline.wait(job_id, timeout=240)
    return job, pipeline.results(job)


@pytest.mark.usefixtures("invalid_first_answers")
def test_invalid_first_answers_are_repaired_and_every_line_ends_valid(pipeline: Pipeline) -> None:
    job, results = run(pipeline, "e2e/structured/extract.jsonl")
    assert job.state is JobState.SUCCEEDED
    assert [r["custom_id"] for r in results] == [f"doc-{i:03d}" for i in range(LINES)]
    assert {r["status"] for r in results} == {"succeeded"}
    for r in results:
        jsonschema.validate(r["output"]["parsed"], SCHEMA)
    repaired = [r for r in results if len(r["attempts"]) == 2]
    assert all(len(r["attempts"]) in (1, 2) for r in results)
    # About a tenth of the first answers were invalid, on every provider.
    assert 20 <= len(repaired) <= 110, len(repaired)
    assert {r["provider"] for r in repaired} == {"openai", "anthropic", "vertex"}
    for r in repaired:
        first, second = r["attempts"]
        assert first["status"] == "failed" and first["error"]["type"] == "schema_validation"
        assert first["error"]["path"].startswith("$")
        assert second["status"] == "succeeded" and second["batch_id"] != first["batch_id"]
    summary = pipeline.summary(job)
    assert summary["counts"] == {"succeeded": LINES}
    assert summary["repaired"] == len(repaired)
    rounds = Counter(b.get("round", 0) for b in summary["provider_batches"])
    assert rounds[0] >= 3 and rounds[1] >= 3  # a follow-up batch per provider

    # Typed reading of the same output.
    typed = list(batchline.read_results(job.results_uri, model=DocumentAnalysis))
    assert len(typed) == LINES
    assert all(isinstance(t, batchline.BatchSuccess) for t in typed)
    assert all(isinstance(t.parsed, DocumentAnalysis) for t in typed)


@pytest.mark.usefixtures("invalid_first_answers")
def test_without_repairs_the_invalid_answers_fail_naming_the_path(pipeline: Pipeline) -> None:
    _, with_repairs = run(pipeline, "e2e/structured/compare.jsonl")
    repaired = [r["custom_id"] for r in with_repairs if len(r["attempts"]) == 2]
    job, results = run(
        pipeline, "e2e/structured/no-repairs.jsonl", metadata={"max_repair_attempts": "0"}
    )
    assert job.state is JobState.PARTIAL
    failed = [r for r in results if r["status"] != "succeeded"]
    # The same lines: the ones a repair repaired are the ones that fail without one.
    assert [r["custom_id"] for r in failed] == repaired and 20 <= len(failed) <= 110
    assert len(results) == LINES and all(len(r["attempts"]) == 1 for r in results)
    for r in failed:
        assert r["status"] == "failed" and r["error"]["type"] == "schema_validation"
        assert r["error"]["path"].startswith("$") and r["error"]["path"] in r["error"]["message"]
        assert r["output"]["parsed"] is None
    kinds = Counter(r["error"]["message"].split(": ", 1)[1].split(" ")[0] for r in failed)
    assert len(kinds) >= 2, kinds  # more than one way of being wrong
    typed = list(batchline.read_results(job.results_uri, model=DocumentAnalysis))
    errors = [t for t in typed if isinstance(t, batchline.BatchError)]
    assert [e.custom_id for e in errors] == [r["custom_id"] for r in failed]
    assert all(e.error_type == "schema_validation" for e in errors)
