"""Submitting a job over the API: inline requests or a gs:// URI in the input bucket.

Idempotent by the `Idempotency-Key` header: the key is claimed for one job, with the
digest of the request, in one transaction. The same request again gets that job; another
request under the same key is refused (422). A key whose job record has expired starts a
new job with a new id, so nothing of the old one is reused.

The api function reads no job data: inline requests are staged with a create-only write
under a name unique to the job, a `gs://` input must be in the deployment's input bucket,
and planning happens in poll (asked for at once on the poll topic).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from batchline.bootstrap import Deps
from batchline.domain.ids import output_prefix
from batchline.domain.models import IdempotencyKey, Job, JobOptions, Source
from batchline.domain.paths import INPUT_SUFFIXES
from batchline.errors import AccessDenied, NotFound, RetryableError
from batchline.log import fields, get_logger
from batchline.services.api.errors import BadRequest, KeyReused
from batchline.services.api.validation import job_request
from batchline.services.api.views import options_view

log = get_logger(__name__)

MAX_IDEMPOTENCY_KEY_CHARS = 256
#: An idempotency key outlives its job's record by this much when records expire.
KEY_GRACE_DAYS = 7


@dataclass(frozen=True)
class SubmitJob:
    """A POST /v1/jobs: its key (given or made), input and options."""

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
            "options": options_view(self.options),
        }
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()

    @classmethod
    def from_http(cls, body: Any, idempotency_key: str | None) -> SubmitJob:
        """The command a parsed JSON body asks for; raises BadRequest naming the field."""
        job = job_request(body)
        key = idempotency_key if idempotency_key is not None else uuid.uuid4().hex
        return cls(key, job.requests, job.input_uri, job.options)


def check_idempotency_key(values: list[str]) -> str | None:
    """The one Idempotency-Key a request carries, or None; raises BadRequest otherwise.

    Keys are printable ASCII: a header's bytes reach us decoded as Latin-1, so anything
    else could not be echoed back unchanged. A comma is refused because servers join a
    repeated header with one.
    """
    if not values:
        return None
    field = "Idempotency-Key"
    if len(values) > 1:
        raise BadRequest("the Idempotency-Key header is repeated; send it once", field)
    key = values[0]
    if not key.strip():
        raise BadRequest("the Idempotency-Key header is blank", field)
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise BadRequest(
            f"the Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters", field
        )
    if not all(" " <= c <= "~" for c in key) or key != key.strip():
        raise BadRequest(
            "the Idempotency-Key must be printable ASCII without leading or trailing spaces",
            field,
        )
    if "," in key:
        raise BadRequest("the Idempotency-Key must not hold a comma (a repeated header)", field)
    return key


def key_id_for(idempotency_key: str) -> str:
    """The record id of an Idempotency-Key (a digest: keys are the caller's text)."""
    return hashlib.sha256(f"api:{idempotency_key}".encode()).hexdigest()[:40]


def new_job_id() -> str:
    """API jobs get a fresh id each: a key reused after its job expired is a new job."""
    return f"job-{uuid.uuid4().hex[:24]}"


def submit_job(deps: Deps, command: SubmitJob) -> tuple[Job, bool]:
    """(job, created): created is False when the key was seen before for this request."""
    key_id = key_id_for(command.idempotency_key)
    digest = command.digest
    held = deps.store.job_for_key(key_id)
    if held is not None:
        return _same_request(held[1], digest), False
    job_id = new_job_id()
    now = deps.clock.now()
    if command.requests is not None:
        source = _stage_inline(deps, job_id, command.requests)
        out_name = "api/inline.jsonl"
    else:
        assert command.input_uri is not None
        source = input_object(deps, command.input_uri)
        out_name = source.name
    job = Job(
        job_id=job_id,
        source=source,
        options=command.options,
        output_prefix=output_prefix(deps.settings.output_bucket, out_name, job_id),
        origin="api",
        idempotency_key=command.idempotency_key,
        request_digest=digest,
        created_at=now,
        updated_at=now,
    )
    key = IdempotencyKey(key_id, job_id, digest, now, expire_at=_key_expiry(deps, now))
    stored, created = deps.store.create_job_for_key(key, job)
    if not created:
        return _same_request(stored, digest), False
    log.info("job accepted", extra=fields(job_id=job_id, source=source.uri, origin="api"))
    try:
        # Plan now rather than at the next scheduler tick; the tick is the backstop.
        deps.publisher.publish(deps.settings.poll_topic, {"job_id": job_id}, job_id=job_id)
    except RetryableError as exc:
        log.warning(
            "could not ask for a poll; the next tick plans the job",
            extra=fields(job_id=job_id, error=str(exc)),
        )
    return stored, True


def _same_request(job: Job, digest: str) -> Job:
    if job.request_digest not in (None, digest):
        raise KeyReused(
            "this Idempotency-Key was already used for a different request "
            f"(job {job.job_id}); use a new key for a new job",
            job.job_id,
        )
    return job


def _stage_inline(deps: Deps, job_id: str, requests: list[Any]) -> Source:
    """Write the requests as a JSONL object of their own, create-only, under the job's
    own (fresh) id: nothing another job staged is ever read back as this job's."""
    uri = f"gs://{deps.settings.work_bucket}/inline/{job_id}.jsonl"
    data = b"".join(orjson.dumps(r) + b"\n" for r in requests)
    generation = deps.blobs.create(uri, data, "application/jsonl")
    bucket, _, name = uri[5:].partition("/")
    return Source(bucket=bucket, name=name, generation=generation, size=len(data))


def input_object(deps: Deps, uri: str) -> Source:
    """The input object a `gs://` URI names, checked before anything is read: it must be
    a JSONL object in the deployment's input bucket, as the bucket trigger takes them."""
    bucket, _, name = uri[5:].partition("/")
    if bucket != deps.settings.input_bucket:
        raise BadRequest(
            f"'input_uri' must name an object in the input bucket gs://{deps.settings.input_bucket}/",
            "input_uri",
        )
    if not name or not name.endswith(INPUT_SUFFIXES):
        raise BadRequest(
            f"'input_uri' must name a {' or '.join(INPUT_SUFFIXES)} object", "input_uri"
        )
    try:
        info = deps.blobs.describe(uri)
    except (NotFound, AccessDenied) as exc:
        raise BadRequest(f"cannot read {uri}: {exc}", "input_uri") from exc
    return Source(
        bucket=bucket,
        name=name,
        generation=info.generation,
        size=info.size,
        md5=info.md5,
        content_encoding=info.content_encoding,
    )


def _key_expiry(deps: Deps, now: float) -> datetime | None:
    days = deps.settings.retention_days
    if days is None:
        return None
    return datetime.fromtimestamp(now, UTC) + timedelta(days=days + KEY_GRACE_DAYS)
