"""The poll function: a scheduler tick fans out, a job message advances one job.

One topic carries both. Cloud Scheduler publishes a tick (any message without a
`job_id`); the tick lists the active jobs and publishes one `{"job_id": ...}` message per
job back to the same topic (`fan_out`), and publishes the webhooks a crash left pending.
Each job message is delivered to an invocation of its own (Cloud Functions runs them side
by side, up to the function's max_instances) that advances that one job within its own
work budget (`advance_one`), so thousands of chunks no longer share one invocation's
420 s and no job waits behind another. The api and OpenAI's webhooks already ask for a
job's poll with the same message on the same topic: one function, one subscription, and
the poll function's only new right is to publish to its own topic.

Delivered twice, late or out of order, every message is harmless: a tick only publishes
job messages; a job message reads the job first and leaves it when it is ended, unknown,
or held by another invocation's live lease (`advance.advance_job`); the work it does take
is under the job's lease, and each step in it is one claim (`domain/claims.py`). A job
message lost, or a tick that died halfway through its publishing, is made good by the
next tick, which publishes again for every job still active.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from batchline.bootstrap import Deps
from batchline.domain.models import Job
from batchline.errors import PermanentError, RetryableError
from batchline.log import fields, get_logger
from batchline.services import notify
from batchline.services.advance import advance_job
from batchline.services.plan import new_owner

log = get_logger(__name__)

#: Publishes a tick makes at once (each waits for the server's acknowledgement).
PUBLISHES_AT_ONCE = 16
#: Job messages that bring news (`services/openai_webhooks.py`: a batch just ended): one
#: that finds the job at work asks its holder to go round once more. Ticks, the api's
#: and duplicates bring none: they read the job and leave it, with no write (a write on
#: the job while its holder writes it is contention, seconds on the emulator).
NEWS_SOURCES = frozenset({"openai-webhook"})


@dataclass
class PollReport:
    """What one invocation did: how many jobs it took up (advanced, or asked to be), and
    why those it could not failed."""

    jobs: int = 0
    errors: list[str] = field(default_factory=list)


def job_message(message: Any) -> str | None:
    """The job a poll message names (`{"job_id": "..."}`), None for a tick."""
    job_id = message.get("job_id") if isinstance(message, dict) else None
    return job_id if isinstance(job_id, str) and job_id else None


def handle(deps: Deps, message: Any) -> PollReport:
    """One delivery on the poll topic: advance the job it names, or fan a tick out."""
    job_id = job_message(message)
    if job_id is None:
        return fan_out(deps)
    return advance_one(deps, job_id, news=message.get("source") in NEWS_SOURCES)


def fan_out(deps: Deps) -> PollReport:
    """A tick: publish one job message per active job to the poll topic, then the
    webhooks a crash left pending. A publish that fails is reported, not retried: the
    next tick publishes for every job still active."""
    deadline = deps.clock.now() + deps.settings.work_budget_seconds
    report = PollReport()
    jobs = deps.store.active_jobs()
    with ThreadPoolExecutor(min(PUBLISHES_AT_ONCE, len(jobs) or 1)) as pool:
        outcomes = list(pool.map(_publisher(deps), jobs))
    for job, error in zip(jobs, outcomes, strict=True):
        if error is None:
            report.jobs += 1
        else:
            report.errors.append(f"{job.job_id}: {error}")
    _publish_pending(deps, deadline, report)
    return report


def _publisher(deps: Deps) -> Callable[[Job], str | None]:
    def publish(job: Job) -> str | None:
        try:
            message = {"job_id": job.job_id}
            deps.publisher.publish(deps.settings.poll_topic, message, job_id=job.job_id)
        except RetryableError as exc:
            log.warning("job message not published", extra=fields(job_id=job.job_id))
            return str(exc)
        return None

    return publish


def advance_one(deps: Deps, job_id: str, *, news: bool = False) -> PollReport:
    """A job message: advance that job, unless it is unknown or ended (a late or repeated
    message). Its failure is logged and acknowledged: the next tick asks again."""
    report = PollReport()
    job = deps.store.get_job(job_id)
    if job is None or job.state.terminal:
        log.info("nothing to advance", extra=fields(job_id=job_id, found=job is not None))
        return report
    deadline = deps.clock.now() + deps.settings.work_budget_seconds
    report.jobs = 1
    _advance(deps, job, new_owner(), deadline, report, news)
    return report


def poll(deps: Deps) -> PollReport:
    """Advance every active job in this invocation, in turn, within one work budget, and
    publish pending webhooks: what a tick and all its job messages do together, run in
    one process (the in-memory tests and tools; the deployed function uses `handle`)."""
    owner = new_owner()
    deadline = deps.clock.now() + deps.settings.work_budget_seconds
    report = PollReport()
    for job in deps.store.active_jobs():
        if deps.clock.now() >= deadline:
            break
        report.jobs += 1
        _advance(deps, job, owner, deadline, report)
    _publish_pending(deps, deadline, report)
    return report


def _advance(
    deps: Deps, job: Job, owner: str, deadline: float, report: PollReport, news: bool = False
) -> None:
    try:
        advance_job(deps, job, owner, deadline, ask_holder=news)
    except (RetryableError, PermanentError) as exc:
        log.warning("job not advanced this time", extra=fields(job_id=job.job_id, error=str(exc)))
        report.errors.append(f"{job.job_id}: {exc}")
    except Exception as exc:
        # One broken job must not starve the others; the next tick tries it again.
        log.exception("job failed to advance", extra=fields(job_id=job.job_id))
        report.errors.append(f"{job.job_id}: {exc!r}")


def _publish_pending(deps: Deps, deadline: float, report: PollReport) -> None:
    try:
        notify.publish_pending(deps, deadline)
    except (RetryableError, PermanentError) as exc:
        log.warning("pending webhooks not published this tick", extra=fields(error=str(exc)))
        report.errors.append(f"webhooks: {exc}")
