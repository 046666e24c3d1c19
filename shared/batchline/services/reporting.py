"""Telling the rest of the system about a job: collect requests, summaries, events.

Order matters for exactly-once: summary.json is written last of the outputs, then the
job's terminal state, then the `job.completed` event, then `event_published`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson

from batchline.bootstrap import Deps
from batchline.domain.models import Job, JobState
from batchline.domain.pricing import PRICES_AS_OF
from batchline.domain.results import Tally
from batchline.log import fields, get_logger
from batchline.services import notify

log = get_logger(__name__)

COMPLETED_EVENT = "job.completed"


def expire_at(deps: Deps, now: float) -> datetime | None:
    """When a job that ends now may be deleted by the TTL policy (None: never)."""
    days = deps.settings.retention_days
    if days is None:
        return None
    return datetime.fromtimestamp(now + days * 86400, tz=UTC)


def request_collect(deps: Deps, job: Job) -> None:
    deps.publisher.publish(deps.settings.collect_topic, {"job_id": job.job_id}, job_id=job.job_id)
    log.info("collect requested", extra=fields(job_id=job.job_id))


def summary(
    deps: Deps,
    job: Job,
    state: JobState,
    tally: Tally | None,
    *,
    provider_batches: list[dict[str, Any]] | None = None,
    error: str | None = None,
    estimate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    now = deps.clock.now()
    tally = tally or Tally()
    counts = dict(sorted(tally.counts.items()))
    warnings = [
        f"no price for {model}: {n} line(s) have cost_usd null and are left out of the totals"
        for model, n in sorted(tally.unpriced.items())
    ]
    return {
        "job_id": job.job_id,
        "state": str(state),
        "source": {"uri": job.source.uri, "generation": job.source.generation},
        "output": {"results": job.results_uri, "summary": job.summary_uri},
        "lines": tally.total,
        "blank_lines": job.counts.get("blank_lines", 0),
        "counts": counts,
        "errors": dict(sorted(tally.errors.items())),
        "reasked": tally.reasked,
        "usage": {"input_tokens": tally.input_tokens, "output_tokens": tally.output_tokens},
        "cost": {
            "batch_usd": round(tally.cost_usd, 10),
            "realtime_usd": round(tally.realtime_cost_usd, 10),
            "saving_usd": round(tally.realtime_cost_usd - tally.cost_usd, 10),
            "prices_as_of": PRICES_AS_OF,
            "unpriced_models": tally.unpriced,
            "by_provider": _by_provider(tally),
            "by_model": {key: _costs(entry) for key, entry in sorted(tally.by_model.items())},
        },
        "by_model": tally.by_model,
        "estimate": estimate,
        "warnings": warnings,
        "provider_batches": provider_batches or [],
        "timings": {
            "created_at": job.created_at,
            "submitted_at": job.submitted_at,
            "collect_requested_at": job.collect_requested_at,
            "cancel_requested_at": job.cancel_requested_at,
            "finished_at": now,
            "duration_s": round(now - job.created_at, 3),
        },
        "error": error,
    }


def _costs(entry: dict[str, Any]) -> dict[str, Any]:
    batch = float(entry.get("cost_usd", 0.0))
    realtime = float(entry.get("realtime_cost_usd", 0.0))
    return {
        "lines": entry["lines"],
        "input_tokens": entry["input_tokens"],
        "output_tokens": entry["output_tokens"],
        "batch_usd": round(batch, 10),
        "realtime_usd": round(realtime, 10),
        "saving_usd": round(realtime - batch, 10),
    }


def _by_provider(tally: Tally) -> dict[str, dict[str, Any]]:
    grouped: dict[str, dict[str, Any]] = {}
    for key, entry in tally.by_model.items():
        mine = grouped.setdefault(key.split("/", 1)[0], {})
        for name in ("lines", "input_tokens", "output_tokens", "cost_usd", "realtime_cost_usd"):
            mine[name] = mine.get(name, 0) + entry.get(name, 0)
    return {provider: _costs(entry) for provider, entry in sorted(grouped.items())}


def reject(
    deps: Deps, job: Job, reason: str, *, estimate: dict[str, Any] | None = None
) -> Job | None:
    """The job cannot run (unreadable file, bad options, over budget): summary.json says
    why; nothing reaches a provider."""
    log.warning("rejected", extra=fields(job_id=job.job_id, reason=reason))
    body = summary(deps, job, JobState.REJECTED, None, error=reason, estimate=estimate)
    deps.blobs.write_bytes(
        job.summary_uri, orjson.dumps(body, option=orjson.OPT_INDENT_2), "application/json"
    )
    now = deps.clock.now()

    def finish(current: Job) -> Job | None:
        if current.state is not JobState.ACCEPTED:
            return None
        return current.to(
            JobState.REJECTED,
            now,
            lease=None,
            error=reason,
            ended_at=now,
            expire_at=expire_at(deps, now),
        )

    done = deps.store.update_job(job.job_id, finish)
    if done is not None:
        publish_completed(deps, done)
    return done


def publish_completed(deps: Deps, job: Job) -> None:
    """Publish `job.completed` for a terminal job, at least once (and its webhook)."""
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
    deps.store.update_job(
        job.job_id, lambda j: None if j.event_published else replace(j, event_published=True)
    )
    log.info("job completed", extra=fields(job_id=job.job_id, state=str(job.state)))
