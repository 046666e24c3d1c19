"""Planning a job under its lease: take the lease, plan the file, commit its chunks.

The job's planning lease is taken before anything is read (`claims.take_for_plan`) and
renewed by a heartbeat while the file is read (`leases.Keeper`); the plan itself is
`plan_file.build_plan`. A plan over the job's budget rejects the job; otherwise the chunks are committed with the job's move
to `submitting` (or `collecting`, when no line is a request) in one transaction, which
only the lease's holder can make. Every file planning writes has a deterministic name and
content, so a planner that takes over an expired lease redoes the same work harmlessly.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change, LeaseTerms
from batchline.domain.estimate import Estimate
from batchline.domain.lines import UnreadableInput
from batchline.domain.models import Job, JobState
from batchline.domain.rounds import DEFAULT_MAX_RETRIES
from batchline.log import fields, get_logger
from batchline.services import messages
from batchline.services.leases import Keeper, LeaseLost, contended
from batchline.services.plan_file import Plan, build_plan
from batchline.services.reject import reject

log = get_logger(__name__)


def new_owner() -> str:
    """A fresh lease owner id for one invocation."""
    return uuid.uuid4().hex


def plan_job(deps: Deps, job_id: str, owner: str) -> Job | None:
    """Take the planning lease and plan; None when there is nothing (left) to plan, or
    when another live invocation holds the lease (it plans; if it dies, a poll tick
    takes the job over once its lease has run out).
    """
    now = deps.clock.now()
    take = Change(claims.take_for_plan, owner, now, LeaseTerms(deps.settings.lease_seconds))
    job = contended(deps.store.update_job, job_id, take)
    if job is None:
        log.info("planned or being planned elsewhere", extra=fields(job_id=job_id))
        return None
    log.info("planning", extra=fields(job_id=job_id, source=job.source.uri))
    keeper = Keeper(deps, f"planning {job_id}", [_planning_renewal(deps, job_id, owner)])
    try:
        with keeper:
            plan = build_plan(deps, job, heartbeat=keeper.check)
    except UnreadableInput as exc:
        return reject(deps, job, str(exc))
    except LeaseLost:
        log.warning(
            "lost the planning lease; the new holder carries on", extra=fields(job_id=job_id)
        )
        return None
    # An auto line may fail over to any other candidate: count them all in the worst case.
    chosen = plan.selector.candidates if plan.selector and plan.selector.chosen else ()
    over = over_budget(job, plan.estimate, chosen)
    if over is not None:
        return reject(deps, job, over, estimate=plan.estimate_section())
    return _commit(deps, job, plan, owner)


def over_budget(job: Job, estimate: Estimate, candidates: tuple[str, ...] = ()) -> str | None:
    """Why the job's worst-case estimate breaks its `max_cost_usd`, or None.

    The worst case counts every follow-up round the options allow (`Estimate.with_rounds`):
    retries, and failover to the job's `fallback` and, for `model: "auto"` lines, to the
    other `candidates`.
    A model without a price cannot be estimated: with a budget set, that rejects the job
    too (a guard that lets unknown costs through is no guard).
    """
    options = job.options
    budget = options.max_cost_usd
    if budget is None:
        return None
    retries = DEFAULT_MAX_RETRIES if options.max_retries is None else options.max_retries
    total = estimate.with_rounds(retries, (*options.fallback, *candidates))
    if total is None:
        models = ", ".join(sorted(estimate.unpriced))
        return (
            f"max_cost_usd is {budget:g} but the cost cannot be estimated: no price for "
            f"{models} (add one with BATCHLINE_PRICES)"
        )
    if total > budget:
        return (
            f"estimated cost ${total:.4f} (worst case: every request writes its max_tokens, "
            f"and is retried {retries} time(s) at its model and at each fallback model) "
            f"exceeds max_cost_usd ${budget:g}; nothing was sent"
        )
    return None


def _planning_renewal(deps: Deps, job_id: str, owner: str) -> Callable[[], bool]:
    """The heartbeat's renewal of the planning lease: True while it is still mine."""

    def renew() -> bool:
        terms = LeaseTerms(deps.settings.lease_seconds)
        change = Change(claims.renew_plan, owner, deps.clock.now(), terms)
        return deps.store.update_job(job_id, change) is not None

    return renew


def _commit(deps: Deps, job: Job, plan: Plan, owner: str) -> Job | None:
    now = deps.clock.now()
    counts = {
        "lines": plan.lines,
        "blank_lines": plan.blank_lines,
        "invalid": plan.invalid,
        "requests": plan.requests,
    }
    commit = Change(claims.commit_plan, owner, now, counts=counts, chunk_count=len(plan.chunks))
    committed = deps.store.update_job(job.job_id, commit, new_chunks=plan.chunks)
    if committed is None:
        log.warning("lost the planning lease", extra=fields(job_id=job.job_id))
        return None
    log.info(
        "planned",
        extra=fields(job_id=job.job_id, chunks=len(plan.chunks), **counts),
    )
    if committed.state is JobState.COLLECTING:
        messages.request_collect(deps, committed)
    return committed
