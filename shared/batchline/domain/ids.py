"""Identifiers batchline derives, so that a duplicate trigger lands on the same records."""

from __future__ import annotations

import hashlib
import re

_REQUEST_PREFIX = "bl-"


def job_id_for_object(bucket: str, name: str, generation: str) -> str:
    """The job id of one generation of an input object: the same for every delivery of its event."""
    digest = hashlib.sha256(f"gs://{bucket}/{name}#{generation}".encode()).hexdigest()
    return f"job-{digest[:24]}"


def job_id_for_key(idempotency_key: str) -> str:
    """A job id derived from an API Idempotency-Key (the same key gives the same id)."""
    digest = hashlib.sha256(f"api:{idempotency_key}".encode()).hexdigest()
    return f"job-{digest[:24]}"


def request_id(line: int) -> str:
    """The provider-facing id of a request: safe for every provider's id rules."""
    return f"{_REQUEST_PREFIX}{line}"


def line_of(request_id_: str) -> int | None:
    """The input line number a provider-facing request id names; None for an id batchline did not make."""
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


#: GCS refuses object names over 1,024 bytes (UTF-8).
MAX_OBJECT_NAME_BYTES = 1024
#: The longest name a job writes under its output prefix.
LONGEST_OUTPUT_FILE = "results.jsonl"
_JOB_ID = re.compile(r"job-[0-9a-f]{24}")
_INPUT_EXTENSIONS = (".jsonl.gz", ".jsonl", ".json.gz", ".json", ".gz")


def output_prefix(output_bucket: str, input_name: str, job_id: str) -> str:
    """`gs://OUT/<input path without extension>/<job_id>/`, made safe:

    - a path segment of the input that is itself a job id gets a `_` appended
      (`a/job-…/x.jsonl` → `a/job-…_/x/`), so one job's prefix never holds another
      job's files: every job's own folder is the only job-id segment of its prefix;
    - a path too long for GCS's 1,024-byte names keeps its first bytes (whole
      characters) and ends in `~` and 12 hex digits of the whole path's SHA-256, so that
      every output name fits and different long paths stay apart.
    """
    stem = input_name
    for ext in _INPUT_EXTENSIONS:
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    segments = [f"{s}_" if _JOB_ID.fullmatch(s) else s for s in stem.split("/")]
    stem = "/".join(segments)
    room = MAX_OBJECT_NAME_BYTES - len(f"/{job_id}/{LONGEST_OUTPUT_FILE}".encode())
    encoded = stem.encode()
    if len(encoded) > room:
        tag = "~" + hashlib.sha256(encoded).hexdigest()[:12]
        kept = encoded[: room - len(tag)].decode("utf-8", errors="ignore")
        stem = kept + tag
    return f"gs://{output_bucket}/{stem}/{job_id}/"
