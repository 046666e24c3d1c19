"""Vertex AI wire format: request lines, job states and counts, result rows. Pure."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batchline.domain.models import BatchState, BatchTag, ResultStatus
from batchline.domain.providers import vertex
from batchline.domain.requests import Request, parse_line


def request(obj: dict[str, Any], line: int = 4, default: str | None = None) -> Request:
    parsed = parse_line(line, orjson.dumps(obj), default_model=default, max_line_bytes=10**6)
    assert isinstance(parsed, Request), parsed
    return parsed


def encoded(req: Request) -> dict[str, Any]:
    raw = vertex.encode(req)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    line: dict[str, Any] = orjson.loads(raw)
    assert list(line) == ["request"]
    body: dict[str, Any] = line["request"]
    return body


def test_a_batchline_line_becomes_a_gemini_request() -> None:
    body = encoded(
        request(
            {
                "custom_id": "x",
                "model": "vertex/gemini-2.5-flash",
                "system": "Be brief.",
                "messages": [
                    {"role": "system", "content": "Answer in French."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": [{"type": "text", "text": "Salut"}]},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "And this?"},
                            {"fileData": {"fileUri": "gs://b/o.png", "mimeType": "image/png"}},
                        ],
                    },
                ],
                "max_tokens": 20,
                "temperature": 0.5,
                "stop": ["\n\n"],
                "metadata": {"team": "a"},
            }
        )
    )
    assert body == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Salut"}]},
            {
                "role": "user",
                "parts": [
                    {"text": "And this?"},
                    {"fileData": {"fileUri": "gs://b/o.png", "mimeType": "image/png"}},
                ],
            },
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]},
        "generationConfig": {"maxOutputTokens": 20, "temperature": 0.5, "stopSequences": ["\n\n"]},
        "labels": {"batchline_request_id": "bl-4"},
    }


def test_a_native_request_passes_untouched_but_for_the_id_label() -> None:
    native = {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
        "labels": {"team": "a", "batchline_request_id": "forged"},
    }
    req = request({"key": "k", "request": native}, line=9, default="vertex/gemini-2.5-pro")
    body = encoded(req)
    assert body == {**native, "labels": {"team": "a", "batchline_request_id": "bl-9"}}
    assert req.native is not None and req.native["labels"]["batchline_request_id"] == "forged"


def test_every_job_state_is_mapped_and_only_ended_ones_end() -> None:
    ended = {
        "JOB_STATE_SUCCEEDED": BatchState.COMPLETED,
        "JOB_STATE_PARTIALLY_SUCCEEDED": BatchState.COMPLETED,
        "JOB_STATE_FAILED": BatchState.FAILED,
        "JOB_STATE_CANCELLED": BatchState.CANCELED,
        "JOB_STATE_EXPIRED": BatchState.EXPIRED,
    }
    assert len(vertex.BATCH_STATES) == 12
    for name, state in vertex.BATCH_STATES.items():
        assert state.ended == (name in ended), name
        if name in ended:
            assert state is ended[name]
    # Queued or pending for days is still waiting, not stuck or ended.
    for name in ("JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_PAUSED"):
        assert not vertex.batch_state({"state": name}).ended
    assert vertex.batch_state({"state": 11}) is BatchState.COMPLETED  # enum as a number
    assert vertex.batch_state({"state": 9}) is BatchState.EXPIRED
    assert vertex.batch_state({}) is BatchState.QUEUED


def test_counts_come_from_completion_stats() -> None:
    assert vertex.batch_counts({}) == {"total": 0, "completed": 0, "failed": 0}
    stats = {"successfulCount": "7", "failedCount": "2", "incompleteCount": "3"}
    assert vertex.batch_counts({"completionStats": stats}) == {
        "total": 12,
        "completed": 7,
        "failed": 5,
    }


def test_job_labels_round_trip_to_the_tag() -> None:
    tag = BatchTag("job-0123abcd", 17)
    assert vertex.batch_tag({"labels": vertex.job_labels(tag)}) == tag
    assert vertex.batch_tag({"labels": {"batchline_job": "j"}}) is None
    assert vertex.batch_tag({"labels": {"batchline_job": "j", "batchline_chunk": "x"}}) is None
    assert vertex.tag_filter(tag) == (
        'labels.batchline_job="job-0123abcd" AND labels.batchline_chunk="17"'
    )


def test_timestamps_with_nanoseconds() -> None:
    assert vertex.timestamp("2026-01-02T03:04:05.123456789Z") == pytest.approx(1767323045.123456)
    assert vertex.timestamp("2026-01-02T03:04:05Z") == 1767323045.0
    assert vertex.timestamp(None) is None


def test_job_errors() -> None:
    assert vertex.batch_errors({}) == ()
    assert vertex.batch_errors({"error": {"code": 3, "message": "bad line"}}) == (
        "INVALID_ARGUMENT: bad line",
    )


def row(response: Any = None, status: str = "", rid: str = "bl-3") -> dict[str, Any]:
    out: dict[str, Any] = {
        "status": status,
        "processed_time": "2026-01-02T03:04:05.000+00:00",
        "request": {"contents": [], "labels": {"batchline_request_id": rid, "team": "a"}},
    }
    if response is not None:
        out["response"] = response
    return out


def test_a_succeeded_row() -> None:
    response = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "thinking...", "thought": True},
                        {"text": "Hello"},
                        {"text": " world"},
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 11,
            "candidatesTokenCount": 2,
            "thoughtsTokenCount": 30,
            "totalTokenCount": 43,
        },
        "modelVersion": "gemini-2.5-flash",
    }
    result = vertex.normalise(row(response))
    assert result.request_id == "bl-3" and result.status is ResultStatus.SUCCEEDED
    assert result.text == "Hello world" and result.finish_reason == "STOP"
    # thoughts are output
    assert result.usage == {"input_tokens": 11, "output_tokens": 32, "cached_input_tokens": 0}
    assert result.response == response and result.error is None


def test_a_blocked_prompt_has_no_text_and_says_why() -> None:
    response = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {}}
    result = vertex.normalise(row(response))
    assert result.status is ResultStatus.SUCCEEDED and result.text is None
    assert result.finish_reason == "SAFETY"


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (
            'Bad Request: {"error": {"code": 400, "message": "x", "status": "INVALID_ARGUMENT"}}',
            "invalid_argument",
            False,
        ),
        ('{"error": {"code": 429, "message": "quota"}}', "http_429", True),
        ("Internal error: INTERNAL", "internal", True),
        ("UNAVAILABLE: try later", "unavailable", True),
        ("something odd happened", "vertex_error", False),
    ],
)
def test_a_failed_row_keeps_its_status(status: str, kind: str, retryable: bool) -> None:
    result = vertex.normalise(row(status=status, rid="bl-12"))
    assert result.request_id == "bl-12" and result.status is ResultStatus.FAILED
    assert result.error == {"type": kind, "message": status, "retryable": retryable}
    assert result.response == {"status": status, "processed_time": row()["processed_time"]}
    assert result.text is None and result.usage is None


def test_a_status_object_and_a_row_without_labels() -> None:
    result = vertex.normalise({"status": {"code": 8, "message": "quota"}, "request": {}})
    assert result.request_id == "" and result.error is not None
    assert result.error["type"] == "resource_exhausted" and result.error["retryable"] is True


def test_prediction_files() -> None:
    assert vertex.is_predictions_file("gs://w/p/prediction-model-x/predictions.jsonl")
    assert vertex.is_predictions_file("gs://w/p/prediction-model-x/predictions_00002.jsonl")
    assert not vertex.is_predictions_file("gs://w/p/prediction-model-x/errors_stats.jsonl")
    assert not vertex.is_predictions_file("gs://w/p/prediction-model-x/predictions.jsonl.tmp")
    assert vertex.model_path("gemini-2.5-flash") == "publishers/google/models/gemini-2.5-flash"
