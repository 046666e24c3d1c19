"""Rejecting a job that cannot run (unreadable file, bad options, over budget).

summary.json says why, first; then the job ends `rejected` (`claims.reject`); then
`job.completed` goes out. Nothing reaches a provider.
"""

from __future__ import annotations

from typing import Any

import orjson

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change
from batchline.domain.models import Job, JobState
from batchline.log import fields, get_logger
from batchline.services.messages import publish_completed
from batchline.services.summary import summary

log = get_logger(__name__)


def reject(
    deps: Deps, job: Job, reason: str, *, estimate: dict[str, Any] | None = None
) -> Job | None:
    """End the accepted `job` rejected for `reason`, its summary.json saying why; the
    rejected job, or None when it had left `accepted` already."""
    log.warning("rejected", extra=fields(job_id=job.job_id, reason=reason))
    body = summary(deps, job, JobState.REJECTED, None, error=reason, estimate=estimate)
    deps.blobs.write_bytes(
        job.summary_uri, orjson.dumps(body, option=orjson.OPT_INDENT_2), "application/json"
    )
    now = deps.clock.now()
    expire_at = claims.expiry(now, deps.settings.retention_days)
    done = deps.store.update_job(job.job_id, Change(claims.reject, reason, now, expire_at))
    if done is not None:
        publish_completed(deps, done)
    return done
