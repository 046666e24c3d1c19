"""What the CLI and the demo do against a deployment (or the local stack): upload a file
as a job, and follow a job until it ends. Kept apart from `cli` so that the demo and the
CLI both use it without importing each other."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchline.config import Settings
    from batchline.domain.models import Job
    from batchline.ports import JobStore


class CliError(Exception):
    """A command cannot do what it was asked; its message is shown to the user as is."""


def upload(
    settings: Settings,
    file: Path,
    name: str,
    model: str | None,
    options: Mapping[str, str] | None = None,
) -> str:
    """Upload `file` as gs://INPUT/name with the job options (`model` and `options`) as
    its custom metadata; returns the job id the upload starts."""
    from batchline.adapters.gcs import GcsBlobStore, make_client
    from batchline.domain.ids import job_id_for_object

    if not file.is_file():
        raise CliError(f"{file}: no such file")
    metadata = {"model": model} if model else {}
    metadata.update(options or {})
    content_type = "application/gzip" if name.endswith(".gz") else "application/jsonl"
    blobs = GcsBlobStore(make_client(settings.project))
    with file.open("rb") as data:
        generation = blobs.put(f"gs://{settings.input_bucket}/{name}", data, content_type, metadata)
    return job_id_for_object(settings.input_bucket, name, generation)


def wait_for(store: JobStore, job_id: str, timeout: float, *, show: bool) -> Job | None:
    """Follow a job until it ends or `timeout` passes; prints progress when `show`."""
    deadline = time.monotonic() + timeout
    last = ""
    job = None
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        line = progress_line(store, job_id, job)
        if show and line != last:
            print(line, file=sys.stderr, flush=True)
            last = line
        if job is not None and job.state.terminal:
            return job
        time.sleep(0.5)
    return job


def progress_line(store: JobStore, job_id: str, job: Job | None) -> str:
    """One line saying where a job stands: its state and requests done at the provider."""
    if job is None:
        return f"{job_id}: waiting for the submit function"
    done = total = 0
    for chunk in store.get_chunks(job_id) if job.chunk_count else []:
        total += chunk.request_count
        done += chunk.batch_counts.get("completed", 0) + chunk.batch_counts.get("failed", 0)
    progress = f" {done}/{total} requests done at the provider" if total else ""
    return f"{job_id}: {job.state}{progress} ({job.chunk_count} batch(es))"
