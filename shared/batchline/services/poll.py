"""A scheduler tick: move every active job forward, within a time budget."""

from __future__ import annotations

from dataclasses import dataclass, field

from batchline.bootstrap import Deps
from batchline.errors import PermanentError, RetryableError
from batchline.log import fields, get_logger
from batchline.services import notify
from batchline.services.advance import advance_job
from batchline.services.plan import new_owner

log = get_logger(__name__)


@dataclass
class PollReport:
    """What one tick did: how many jobs it took up, and why those it could not advance
    failed."""

    jobs: int = 0
    errors: list[str] = field(default_factory=list)


def poll(deps: Deps) -> PollReport:
    """Advance each active job. One job's transient failure does not stop the others;
    the next tick retries it, so the tick itself is acknowledged."""
    owner = new_owner()
    deadline = deps.clock.now() + deps.settings.work_budget_seconds
    report = PollReport()
    for job in deps.store.active_jobs():
        if deps.clock.now() >= deadline:
            break
        report.jobs += 1
        try:
            advance_job(deps, job, owner, deadline)
        except (RetryableError, PermanentError) as exc:
            log.warning(
                "job not advanced this tick", extra=fields(job_id=job.job_id, error=str(exc))
            )
            report.errors.append(f"{job.job_id}: {exc}")
        except Exception as exc:
            # One broken job must not starve the others; the next tick tries it again.
            log.exception("job failed to advance", extra=fields(job_id=job.job_id))
            report.errors.append(f"{job.job_id}: {exc!r}")
    try:
        notify.publish_pending(deps, deadline)
    except (RetryableError, PermanentError) as exc:
        log.warning("pending webhooks not published this tick", extra=fields(error=str(exc)))
        report.errors.append(f"webhooks: {exc}")
    return report
