"""Finishing a job once its answers are merged: its summary, its final state, its event.

`summary.json` is written before the job's state changes (the state is what says the job
has ended), then the job moves to its final state in one transaction, its records get
their expiry, and `job.completed` is published. A collect that dies between these steps
is run again and redoes them harmlessly.
"""

from __future__ import annotations

from typing import Any

import orjson

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change
from batchline.domain.models import Chunk, Job, JobState, ResultStatus
from batchline.domain.results import Tally
from batchline.domain.workfiles.plan import PlanRecord
from batchline.errors import ProviderError
from batchline.services.messages import publish_completed
from batchline.services.summary import summary


def finish_job(
    deps: Deps, job: Job, chunks: list[Chunk], tally: Tally, plan: PlanRecord
) -> Job | None:
    """Write the job's summary and move it to the final state its `tally` earned (or
    `canceled`); the job as it is afterwards."""
    job_id = job.job_id
    state = final_state(tally, canceled=job.cancel_requested_at is not None)
    batches = provider_batches(chunks)
    body = summary(
        deps,
        job,
        state,
        tally,
        provider_batches=batches,
        estimate=plan.estimate,
        orphans=orphan_batches(deps, chunks),
        rounds=rounds(chunks),
    )
    deps.blobs.write_bytes(
        job.summary_uri, orjson.dumps(body, option=orjson.OPT_INDENT_2), "application/json"
    )
    now = deps.clock.now()
    expiry = claims.expiry(now, deps.settings.retention_days)
    finish = Change(claims.finish, state, now, tally=tally, expire_at=expiry)
    done = deps.store.update_job(job_id, finish) or deps.store.get_job(job_id)
    if expiry is not None:
        for chunk in chunks:
            deps.store.update_chunk(job_id, chunk.index, Change(claims.stamp_expiry, expiry))
    if done is not None and done.state.terminal:
        publish_completed(deps, done)
    return done


def provider_batches(chunks: list[Chunk]) -> list[dict[str, Any]]:
    """summary.json's `provider_batches`: each chunk's batch, follow-ups with their round."""
    return [
        {
            "chunk": c.index,
            "provider": c.provider,
            "model": c.model,
            "batch_id": c.batch_id,
            "state": str(c.batch_state) if c.batch_state else None,
            "requests": c.request_count,
            "error": c.error,
            **(
                {"round": c.round, "round_of": c.round_of, "reason": c.round_reason}
                if c.round
                else {}
            ),
        }
        for c in chunks
    ]


def rounds(chunks: list[Chunk]) -> list[dict[str, Any]]:
    """summary.json's `rounds`: every round after the first, with why it ran, to which
    models, and how many chunks and requests it sent."""
    found: dict[tuple[int, str], dict[str, Any]] = {}
    for chunk in chunks:
        if not chunk.round:
            continue
        reason = chunk.round_reason or "repair"
        entry = found.setdefault(
            (chunk.round, reason), {"round": chunk.round, "reason": reason, "chunks": 0}
        )
        entry["chunks"] += 1
        models = entry.setdefault("requests", {})
        key = f"{chunk.provider}/{chunk.model}"
        models[key] = models.get(key, 0) + chunk.request_count
    return [found[key] for key in sorted(found)]


def orphan_batches(deps: Deps, chunks: list[Chunk]) -> list[dict[str, Any]]:
    """summary.json's `orphans`: batches made with a chunk's requests that nobody read
    (duplicates the create lock found and cancelled, a batch a chunk held that was not its
    own: ended, as every chunk's batch is by now), with how far each ran: what it answered
    was billed. Collect only reads them (its provider access is read-only)."""
    found: list[dict[str, Any]] = []
    for chunk in chunks:
        provider = deps.providers.get(chunk.provider)
        for batch_id in chunk.orphans:
            entry: dict[str, Any] = {"chunk": chunk.index, "provider": chunk.provider}
            entry.update(batch_id=batch_id, state=None, counts={})
            try:
                batch = provider.get_batch(batch_id)
                entry.update(state=str(batch.state), counts=batch.counts)
            except ProviderError as exc:
                entry["error"] = str(exc)
            found.append(entry)
    return found


def final_state(tally: Tally, *, canceled: bool) -> JobState:
    """`canceled` when a cancel was asked for and cut some line short; a cancel that came
    too late to stop anything leaves the state the answers earned."""
    if canceled and tally.counts.get(str(ResultStatus.CANCELED), 0):
        return JobState.CANCELED
    succeeded = tally.counts.get(str(ResultStatus.SUCCEEDED), 0)
    if succeeded == tally.total and succeeded > 0:
        return JobState.SUCCEEDED
    if succeeded == 0:
        return JobState.FAILED
    return JobState.PARTIAL
