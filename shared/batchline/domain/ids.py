"""Identifiers batchline derives, so that a duplicate trigger lands on the same records."""

from __future__ import annotations

import hashlib

_REQUEST_PREFIX = "bl-"


def job_id_for_object(bucket: str, name: str, generation: str) -> str:
    digest = hashlib.sha256(f"gs://{bucket}/{name}#{generation}".encode()).hexdigest()
    return f"job-{digest[:24]}"


def job_id_for_key(idempotency_key: str) -> str:
    digest = hashlib.sha256(f"api:{idempotency_key}".encode()).hexdigest()
    return f"job-{digest[:24]}"


def request_id(line: int) -> str:
    """The provider-facing id of a request: safe for every provider's id rules."""
    return f"{_REQUEST_PREFIX}{line}"


def line_of(request_id_: str) -> int | None:
    if not request_id_.startswith(_REQUEST_PREFIX):
        return None
    try:
        return int(request_id_[len(_REQUEST_PREFIX) :])
    except ValueError:
        return None


def generated_custom_id(line: int, taken: frozenset[str] | set[str]) -> str:
    """`line-<n>` for a line without custom_id, never equal to an id the user gave."""
    candidate = f"line-{line}"
    suffix = 2
    while candidate in taken:
        candidate = f"line-{line}-{suffix}"
        suffix += 1
    return candidate


def output_prefix(output_bucket: str, input_name: str, job_id: str) -> str:
    """gs://OUT/<input path without extension>/<job_id>/"""
    stem = input_name
    for ext in (".jsonl.gz", ".jsonl", ".json.gz", ".json", ".gz"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    return f"gs://{output_bucket}/{stem}/{job_id}/"
