"""Strict checks against `google-cloud-aiplatform`'s own protos, for the emulator and the adapter.

The SDK's REST transport parses answers with `ignore_unknown_fields=True`; these checks do
not: an unknown field, a wrong type or a bad enum is a problem.

- `message_problems(cls, data)`: `data` parses as the proto-plus message `cls`.
- `request_line_problems(line)`: an input line is `{"request": GenerateContentRequest}`,
  with contents and batchline's request id label, every label as GCP allows.
- `row_problems(row)`: a prediction row has Vertex's shape, its echoed request and its
  response parse as the protos, and a failed row has a status and no response.
"""

from __future__ import annotations

import re
from typing import Any

from google.cloud.aiplatform_v1.types import GenerateContentRequest, GenerateContentResponse
from google.protobuf import json_format

LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
ROW_KEYS = frozenset({"status", "processed_time", "request", "response"})


def message_problems(cls: Any, data: Any) -> list[str]:
    """Why `data` (JSON) is not exactly a `cls` (empty: it is)."""
    try:
        json_format.ParseDict(data, cls.pb()(), ignore_unknown_fields=False)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        return [f"not a {cls.__name__}: {exc}"]
    return []


def label_problems(labels: Any, where: str) -> list[str]:
    if not isinstance(labels, dict):
        return [f"{where}: not a map"]
    problems = []
    for key, value in labels.items():
        if not LABEL_KEY.match(key):
            problems.append(f"{where}: bad label key {key!r}")
        if not isinstance(value, str) or not LABEL_VALUE.match(value):
            problems.append(f"{where}: bad label value {value!r}")
    return problems


def request_line_problems(line: Any) -> list[str]:
    if not isinstance(line, dict) or set(line) != {"request"}:
        return [f"an input line is {{'request': ...}} only, got {line!r:.80}"]
    request = line["request"]
    problems = message_problems(GenerateContentRequest, request)
    if not request.get("contents"):
        problems.append("request.contents: missing or empty")
    labels = request.get("labels") or {}
    problems += label_problems(labels, "request.labels")
    if not re.fullmatch(r"bl-\d+", str(labels.get("batchline_request_id", ""))):
        problems.append("request.labels: no batchline_request_id")
    return problems


def row_problems(row: Any) -> list[str]:
    if not isinstance(row, dict):
        return ["a row is an object"]
    problems = [f"unknown row key {k!r}" for k in sorted(set(row) - ROW_KEYS)]
    for key in ("status", "processed_time", "request"):
        if key not in row:
            problems.append(f"row without {key!r}")
    if not isinstance(row.get("status"), str):
        problems.append("status: not a string")
    problems += message_problems(GenerateContentRequest, row.get("request"))
    if row.get("status"):
        if "response" in row:
            problems.append("a failed row has no response")
    elif "response" not in row:
        problems.append("a succeeded row has a response")
    else:
        problems += message_problems(GenerateContentResponse, row["response"])
    return problems
