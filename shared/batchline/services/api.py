"""The HTTP API's operations: submit a job (inline requests or a gs:// URI), read one.

Idempotent by the `Idempotency-Key` header: the job id derives from it, so a retried
POST finds the job the first one made.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from batchline.bootstrap import Deps
from batchline.domain.ids import job_id_for_key, output_prefix
from batchline.domain.models import Job, JobOptions, Source
from batchline.domain.options import OptionError
from batchline.domain.options import from_api as job_options_from_api
from batchline.errors import AccessDenied, NotFound, PermanentError
from batchline.services.submit import claim_job, start_job

MAX_INLINE_REQUESTS = 10_000
INLINE_SUBMIT_BUDGET_SECONDS = 20.0


class BadRequest(PermanentError):
    """The API call itself is malformed (HTTP 400)."""


class KeyReused(PermanentError):
    """The Idempotency-Key was first used with a different request (HTTP 409)."""


@dataclass(frozen=True)
class SubmitJob:
    idempotency_key: str
    requests: list[Any] | None
    input_uri: str | None
    options: JobOptions

    @property
    def digest(self) -> str:
        """What the request asks for, so a reused key with another body is caught."""
        body = {
            "requests": self.requests,
            "input_uri": self.input_uri,
            "options": _options_view(self.options),
        }
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()

    @classmethod
    def from_http(cls, body: Any, idempotency_key: str | None) -> SubmitJob:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        requests = body.get("requests")
        input_uri = body.get("input_uri")
        if (requests is None) == (input_uri is None):
            raise BadRequest("give exactly one of 'requests' (a list) or 'input_uri' (gs://...)")
        if requests is not None and (not isinstance(requests, list) or not requests):
            raise BadRequest("'requests' must be a non-empty list")
        if requests is not None and len(requests) > MAX_INLINE_REQUESTS:
            raise BadRequest(f"at most {MAX_INLINE_REQUESTS} inline requests; use 'input_uri'")
        if input_uri is not None and (
            not isinstance(input_uri, str) or not input_uri.startswith("gs://")
        ):
            raise BadRequest("'input_uri' must be a gs:// URI")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise BadRequest("'options' must be an object")
        try:
            job_options = job_options_from_api(options)
        except OptionError as exc:
            raise BadRequest(f"'options.{exc.option}': {exc.reason}") from None
        key = (idempotency_key or "").strip() or uuid.uuid4().hex
        if len(key) > 256:
            raise BadRequest("Idempotency-Key is longer than 256 characters")
        return cls(key, requests, input_uri, job_options)


def submit_job(deps: Deps, command: SubmitJob) -> tuple[Job, bool]:
    """(job, created): created is False when the key was seen before."""
    job_id = job_id_for_key(command.idempotency_key)
    digest = command.digest
    existing = deps.store.get_job(job_id)
    if existing is not None:
        if existing.request_digest not in (None, digest):
            raise KeyReused(
                "this Idempotency-Key was already used for a different request "
                f"(job {job_id}); use a new key for a new job"
            )
        return existing, False
    if command.requests is not None:
        uri = f"gs://{deps.settings.work_bucket}/inline/{job_id}.jsonl"
        data = b"".join(orjson.dumps(r) + b"\n" for r in command.requests)
        deps.blobs.write_bytes(uri, data, "application/jsonl")  # same key ⇒ same bytes
        out_name = "api/inline.jsonl"
    else:
        assert command.input_uri is not None
        uri = command.input_uri
        out_name = uri[5:].partition("/")[2]
    try:
        generation, size = deps.blobs.stat(uri)
    except (NotFound, AccessDenied, ValueError) as exc:
        raise BadRequest(f"cannot read {uri}: {exc}") from exc
    bucket, _, name = uri[5:].partition("/")
    now = deps.clock.now()
    job = Job(
        job_id=job_id,
        source=Source(bucket=bucket, name=name, generation=generation, size=size),
        options=command.options,
        output_prefix=output_prefix(deps.settings.output_bucket, out_name, job_id),
        origin="api",
        idempotency_key=command.idempotency_key,
        request_digest=digest,
        created_at=now,
        updated_at=now,
    )
    # Inline requests are small: plan and start submitting within the request, briefly.
    # A gs:// file may be large: the job is only claimed here and the next poll tick plans
    # it, so the HTTP call never waits on a big read.
    if command.requests is not None:
        started = start_job(deps, job, submit_budget=INLINE_SUBMIT_BUDGET_SECONDS)
    else:
        started = claim_job(deps, job)
    return started or job, True


def job_view(job: Job) -> dict[str, Any]:
    """The public shape of a job (no leases, no internals)."""
    return {
        "job_id": job.job_id,
        "state": str(job.state),
        "origin": job.origin,
        "source": job.source.uri,
        "options": _options_view(job.options),
        "counts": job.counts,
        "chunks": job.chunk_count,
        "usage": job.usage,
        "cost_usd": job.cost_usd,
        "results_uri": job.results_uri
        if job.state.terminal and job.state.value != "rejected"
        else None,
        "summary_uri": job.summary_uri if job.state.terminal else None,
        "error": job.error,
        "created_at": job.created_at,
        "cancel_requested_at": job.cancel_requested_at,
        "ended_at": job.ended_at,
    }


def _options_view(options: JobOptions) -> dict[str, Any]:
    """Model and labels always; the other options when set."""
    view = {"model": options.model, "labels": options.labels}
    view.update({k: v for k, v in asdict(options).items() if k not in view and v is not None})
    return view
