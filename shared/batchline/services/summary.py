"""summary.json: what a job did, in counts, tokens, cost (at batch and at real-time
prices) and timings. It is written last of a job's outputs, before its terminal state."""

from __future__ import annotations

from typing import Any

from batchline.bootstrap import Deps
from batchline.domain.models import Job, JobState
from batchline.domain.pricing import PRICES_AS_OF
from batchline.domain.results import Tally


def summary(
    deps: Deps,
    job: Job,
    state: JobState,
    tally: Tally | None,
    *,
    provider_batches: list[dict[str, Any]] | None = None,
    error: str | None = None,
    estimate: dict[str, Any] | None = None,
    orphans: list[dict[str, Any]] | None = None,
    rounds: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The summary.json document of `job` ending in `state` now, from the `tally` of its
    result lines (None: no line was collected), with its provider batches, the batches
    made with its requests that nobody read (`orphans`), its follow-up rounds, the error
    that ended it and the planner's cost estimate."""
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
        "repaired": tally.repaired,
        "providers": dict(sorted(tally.providers.items())),
        "rounds": rounds or [],
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
        "orphans": orphans or [],
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
