"""The messages a job sends on Pub/Sub: the request to collect it, and `job.completed`.

Both may go out more than once (a crash between the message and the record of it): the
collect function and the event's subscribers take a repeat as a no-op.
"""

from __future__ import annotations

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change
from batchline.domain.models import Job, JobState
from batchline.errors import RetryableError
from batchline.log import fields, get_logger
from batchline.services import notify

log = get_logger(__name__)

COMPLETED_EVENT = "job.completed"


def request_collect(deps: Deps, job: Job) -> None:
    """Ask the collect function (through the collect topic) to collect `job`, then note
    that the ask went out (until it is noted, poll asks again within a lease: the
    sender may have died between the job's change and the message)."""
    deps.publisher.publish(deps.settings.collect_topic, {"job_id": job.job_id}, job_id=job.job_id)
    log.info("collect requested", extra=fields(job_id=job.job_id))
    sent = Change(claims.collect_sent, job.collect_requested_at, deps.clock.now())
    try:
        deps.store.update_job(job.job_id, sent)
    except RetryableError as exc:  # the ask went out; at worst poll asks again
        log.warning("collect ask not noted", extra=fields(job_id=job.job_id, error=str(exc)))


def publish_completed(deps: Deps, job: Job) -> None:
    """Publish `job.completed` for a terminal job, at least once, then record that it
    went out (once); and hand its webhook, if one is pending, to the notify topic."""
    notify.request_delivery(deps, job)
    if job.event_published:
        return
    deps.publisher.publish(
        deps.settings.events_topic,
        {
            "type": COMPLETED_EVENT,
            "job_id": job.job_id,
            "state": str(job.state),
            "counts": job.counts,
            "results_uri": job.results_uri if job.state is not JobState.REJECTED else None,
            "summary_uri": job.summary_uri,
            "error": job.error,
        },
        type=COMPLETED_EVENT,
        job_id=job.job_id,
        state=str(job.state),
    )
    deps.store.update_job(job.job_id, Change(claims.mark_published))
    log.info("job completed", extra=fields(job_id=job.job_id, state=str(job.state)))
