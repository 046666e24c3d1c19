"""A job's outputs over the API: its `summary.json`, and its `results.jsonl` streamed.

A caller reaches only what the deployment owns: the objects read are named by the job's
own record (`Job.output_prefix`, which the deployment made), and only when that prefix is
in the deployment's output bucket and ends in the job's own id. Results are read through
the BlobStore port a line at a time and sent in blocks: memory stays near one read buffer
and one block, never the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import orjson

from batchline.domain.models import Job, JobState
from batchline.errors import NotFound
from batchline.log import fields, get_logger
from batchline.ports import BlobStore, JobStore
from batchline.services.api.errors import Missing

log = get_logger(__name__)

#: Result lines are sent in blocks of about this many bytes (a write per line is slow).
SEND_BLOCK_BYTES = 64 * 1024
#: results.jsonl is read in blocks of this many bytes.
READ_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Outputs:
    """Where a deployment's job outputs are: its jobs, its blobs, its output bucket."""

    store: JobStore
    blobs: BlobStore
    output_bucket: str


def summary(place: Outputs, job_id: str) -> bytes:
    """The job's summary.json as written; Missing (404) while the job has none."""
    job = _job(place, job_id)
    if not job.state.terminal:
        raise Missing(f"job {job_id} is {job.state}; its summary is written when it ends", "job_id")
    try:
        return place.blobs.read_bytes(_owned(place, job, job.summary_uri))
    except NotFound:
        raise Missing(f"job {job_id} ({job.state}) has no summary.json", "job_id") from None


@dataclass(frozen=True)
class ResultsWanted:
    """Which result lines: those with `status` (all when None), after skipping `offset`
    of them, at most `limit`."""

    status: str | None = None
    offset: int = 0
    limit: int | None = None


def results(place: Outputs, job_id: str, wanted: ResultsWanted) -> Iterator[bytes]:
    """The job's result lines as blocks of JSONL. Missing (404) until the job has them;
    checked before the first block, so that an answer's status is known up front."""
    job = _job(place, job_id)
    if not job.state.terminal or job.state is JobState.REJECTED:
        why = (
            "was rejected and has no results"
            if job.state is JobState.REJECTED
            else (f"is {job.state}; results come when it ends")
        )
        raise Missing(f"job {job_id} {why}", "job_id")
    uri = _owned(place, job, job.results_uri)
    try:
        place.blobs.describe(uri)
    except NotFound:
        raise Missing(f"job {job_id} ({job.state}) has no results.jsonl", "job_id") from None
    return _blocks(place.blobs, job_id, uri, wanted)


def _blocks(blobs: BlobStore, job_id: str, uri: str, wanted: ResultsWanted) -> Iterator[bytes]:
    marker = None if wanted.status is None else orjson.dumps(wanted.status)
    skip, left = wanted.offset, wanted.limit
    block = bytearray()
    sent = 0
    with blobs.open_read(uri) as reader:
        for line in _lines(reader):
            if left == 0:
                break
            # The cheap test first: a line without the word cannot have that status.
            if marker is not None and (
                marker not in line or orjson.loads(line).get("status") != wanted.status
            ):
                continue
            if skip:
                skip -= 1
                continue
            block += line
            if left is not None:
                left -= 1
            if len(block) >= SEND_BLOCK_BYTES:
                yield bytes(block)
                sent += len(block)
                block.clear()
    if block:
        yield bytes(block)
        sent += len(block)
    log.info("results sent", extra=fields(job_id=job_id, bytes=sent))


def _lines(reader: BinaryIO) -> Iterator[bytes]:
    """The reader's lines (each with its newline), read a block at a time: a reader's own
    readline may read byte by byte."""
    pending = bytearray()
    while block := reader.read(READ_BYTES):
        pending += block
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            yield bytes(pending[start : end + 1])
            start = end + 1
        del pending[:start]
    if pending:
        yield bytes(pending) + b"\n"


def _job(place: Outputs, job_id: str) -> Job:
    job = place.store.get_job(job_id)
    if job is None:
        raise Missing(f"no job {job_id}", "job_id")
    return job


def _owned(place: Outputs, job: Job, uri: str) -> str:
    """`uri`, when it is under the job's own output prefix in this deployment's output
    bucket; a record that says otherwise is not followed (and is logged)."""
    prefix = job.output_prefix
    if not (
        prefix.startswith(f"gs://{place.output_bucket}/")
        and prefix.endswith(f"/{job.job_id}/")
        and uri.startswith(prefix)
        and "/" not in uri[len(prefix) :]
    ):
        log.error(
            "a job's output is outside the deployment's output bucket; not read",
            extra=fields(job_id=job.job_id, uri=uri),
        )
        raise Missing(f"job {job.job_id} has no outputs this deployment can read", "job_id")
    return uri
