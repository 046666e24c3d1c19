"""A new input object: create its job (the claim), plan it, and submit what time allows."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from batchline.bootstrap import Deps
from batchline.domain import claims, options
from batchline.domain.claims import LeaseTerms
from batchline.domain.ids import job_id_for_object, output_prefix
from batchline.domain.models import Job, JobOptions, JobState, Source
from batchline.domain.paths import INPUT_SUFFIXES
from batchline.log import fields, get_logger
from batchline.services import advance
from batchline.services.plan import new_owner, plan_job
from batchline.services.reject import reject

log = get_logger(__name__)


@dataclass(frozen=True)
class ObjectFinalized:
    """What we need of a `google.cloud.storage.object.v1.finalized` event."""

    bucket: str
    name: str
    generation: str
    size: int
    md5: str | None = None
    content_encoding: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def handle_object_finalized(deps: Deps, event: ObjectFinalized) -> Job | None:
    """Start the job of a JSONL object dropped into the input bucket: the job as it is
    now, None for an object that is not input. Object metadata that is not a valid job
    option rejects the job once, naming it."""
    if event.bucket != deps.settings.input_bucket:
        log.warning(
            "event for another bucket ignored", extra=fields(bucket=event.bucket, name=event.name)
        )
        return None
    if not event.name.endswith(INPUT_SUFFIXES):
        log.info("not a JSONL file; ignored", extra=fields(name=event.name))
        return None
    job_id = job_id_for_object(event.bucket, event.name, event.generation)
    now = deps.clock.now()
    problem = None
    try:
        job_options = options.from_metadata(event.metadata)
    except options.OptionError as exc:
        job_options, problem = JobOptions(), f"object metadata: {exc}"
    job = Job(
        job_id=job_id,
        source=Source(
            bucket=event.bucket,
            name=event.name,
            generation=event.generation,
            size=event.size,
            md5=event.md5,
            content_encoding=event.content_encoding,
        ),
        options=job_options,
        output_prefix=output_prefix(deps.settings.output_bucket, event.name, job_id),
        created_at=now,
        updated_at=now,
    )
    if problem is not None:
        claimed = claim_job(deps, job)
        if claimed is not None and claimed.state is JobState.ACCEPTED:
            return reject(deps, claimed, problem)
        return claimed
    return start_job(deps, job)


def claim_job(deps: Deps, job: Job) -> Job | None:
    """Create the job without planning it: the next poll tick plans and submits it."""
    if deps.store.create_job(job):
        log.info("job accepted", extra=fields(job_id=job.job_id, source=job.source.uri))
        return job
    return deps.store.get_job(job.job_id)


def start_job(deps: Deps, job: Job, send_budget: float | None = None) -> Job | None:
    """Claim the job by creating it; a duplicate trigger finds it and carries on or stops.

    The job is created holding our planning lease, so a poll tick that sees it before we
    plan does not take it for abandoned. A duplicate reads the job first and leaves it to
    whoever is at it (a live planning or advancing lease): no transaction, no failure.
    """
    owner = new_owner()
    terms = LeaseTerms(deps.settings.lease_seconds)
    job = replace(job, lease=terms.lease(owner, deps.clock.now()))
    if not deps.store.create_job(job):
        existing = deps.store.get_job(job.job_id)
        log.info("duplicate trigger", extra=fields(job_id=job.job_id))
        if existing is None or existing.state.terminal or existing.state is JobState.COLLECTING:
            return existing
        if claims.lease_state(existing.lease, owner, deps.clock.now()).live:
            return existing  # a live invocation is at it
        # Typically the retry of a delivery that failed mid-plan or mid-submit: carry on
        # now rather than wait for the next poll tick (the job's lease keeps it single).
        _send_pending(deps, existing, owner, send_budget)
        return deps.store.get_job(job.job_id)
    log.info("job accepted", extra=fields(job_id=job.job_id, source=job.source.uri))
    planned = plan_job(deps, job.job_id, owner)
    if planned is not None and planned.state is JobState.SUBMITTING:
        _send_pending(deps, planned, owner, send_budget)
    return deps.store.get_job(job.job_id)


def _send_pending(deps: Deps, job: Job, owner: str, budget: float | None) -> None:
    deadline = deps.clock.now() + (deps.settings.work_budget_seconds if budget is None else budget)
    advance.advance_job(deps, job, owner, deadline)
