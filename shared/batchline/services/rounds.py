"""Starting a follow-up round: the staged follow-ups of every chunk cut into new chunks.

When every chunk is collected and some staged follow-ups (`follow_ups`) that no chunk
answers yet, `plan_round` has the one chunk planner cut each group into new chunks under
its target provider's limits, as it cuts the first round's, and `start_round` commits them
and moves the job back to running, in one transaction; poll sends them like any chunk
(exactly once, by the same leases, tags and create lock), and the next collect replaces
their lines with the new answers.

A round whose worst case would take the job's cost past `max_cost_usd` is not sent
(`over_budget`): its lines keep their failure, and a run of their result lines saying so
(`decline`) is merged after the others. Every name is deterministic and every write
create-if-absent, so racing or repeated collects stage and decline the same round once.
"""

from __future__ import annotations

from contextlib import ExitStack

import orjson

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change
from batchline.domain.models import Chunk, Job
from batchline.domain.paths import WorkPaths
from batchline.domain.planning import RequestTooLarge
from batchline.domain.workfiles._io import TSV
from batchline.domain.workfiles.collected import FollowUp
from batchline.domain.workfiles.manifest import open_manifest, read_manifest
from batchline.domain.workfiles.payload import open_payload
from batchline.domain.workfiles.requests import checked_row, open_rows
from batchline.domain.workfiles.runs import encode_rows
from batchline.domain.workfiles.runs import open_rows as open_run
from batchline.log import fields, get_logger
from batchline.services.staging import ChunkStager

log = get_logger(__name__)

Pending = list[tuple[Chunk, FollowUp]]


def over_budget(job: Job, spent_usd: float, pending: Pending) -> str | None:
    """Why the round of `pending` may not be sent (the job has spent `spent_usd`), or None."""
    budget = job.options.max_cost_usd
    if budget is None:
        return None
    worst = [g.worst_usd for _, g in pending]
    if any(w is None for w in worst):
        return (
            f"its cost cannot be bounded (a model without a price) under max_cost_usd ${budget:g}"
        )
    total = spent_usd + sum(w for w in worst if w is not None)
    if total > budget:
        return (
            f"spent ${spent_usd:.4f}, and the round's worst case would take the job to "
            f"${total:.4f}, past max_cost_usd ${budget:g}"
        )
    return None


def decline(deps: Deps, pending: Pending, runs: dict[int, list[str]], why: str) -> list[str]:
    """Write, for every line of the round not sent, its result line again with why (one
    run per source chunk, merged after the others); the runs' URIs."""
    written: list[str] = []
    for source, group in pending:
        lines = set(read_manifest(deps.blobs, group.manifest))
        uri = group.declined
        rows: list[tuple[int, bytes]] = []
        for run in runs.get(source.index, []):
            with open_run(deps.blobs, run, 0) as found:
                for line, _, raw in found:
                    if line in lines:
                        rows.append((line, _declined(raw, why)))
        rows.sort(key=lambda row: row[0])
        deps.blobs.write_bytes(uri, encode_rows(rows), TSV)  # False: written before
        written.append(uri)
    log.warning("a follow-up round was not sent", extra=fields(reason=why, groups=len(pending)))
    return written


def _declined(raw: bytes, why: str) -> bytes:
    record = orjson.loads(raw)
    error = dict(record.get("error") or {})
    note = f"not sent again: {why}"
    error["message"] = f"{error['message']} ({note})" if error.get("message") else note
    record["error"] = error
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def plan_round(deps: Deps, paths: WorkPaths, chunks: list[Chunk], pending: Pending) -> list[Chunk]:
    """Cut and stage the pending follow-ups as the next chunks (not yet committed); none
    when none fits a batch any more."""
    new: list[Chunk] = []
    for source, group in pending:
        new.extend(_plan_group(deps, paths, source, group, len(chunks) + len(new)))
    return new


def start_round(deps: Deps, job: Job, chunks: list[Chunk], new: list[Chunk]) -> Job | None:
    """Commit the follow-up chunks `new` (`plan_round`) and move the job back to running."""
    now = deps.clock.now()
    reopen = Change(claims.reopen_for_round, now, chunk_count=len(chunks), new_chunks=len(new))
    reopened = deps.store.update_job(job.job_id, reopen, new_chunks=new)
    if reopened is None:
        return deps.store.get_job(job.job_id)
    sent: dict[str, int] = {}
    for chunk in new:
        key = f"{chunk.round_reason} {chunk.provider}/{chunk.model}"
        sent[key] = sent.get(key, 0) + chunk.request_count
    log.info("a follow-up round starts", extra=fields(job_id=job.job_id, requests=sent))
    return reopened


def _plan_group(
    deps: Deps, paths: WorkPaths, source: Chunk, group: FollowUp, index: int
) -> list[Chunk]:
    """Cut one staged group into chunks `index`, `index + 1`, ... (the chunk planner, as
    for the first round) and stage them."""
    provider = group.provider or source.provider
    model = group.model or source.model
    stager = ChunkStager(
        deps,
        paths,
        index,
        round_number=source.round + 1,
        round_of=source.index,
        round_reason=group.reason,
        store_requests=group.stored is not None,
    )
    planner = stager.planner()
    staged: list[Chunk] = []
    with ExitStack() as stack:
        stack.enter_context(stager.abandoning(planner))
        lines = stack.enter_context(open_payload(deps.blobs, group.payload))
        entries = stack.enter_context(open_manifest(deps.blobs, group.manifest))
        rows = stack.enter_context(open_rows(deps.blobs, group.stored))
        for number, (encoded, entry) in enumerate(zip(lines, entries, strict=True), 1):
            row = next(rows, b"")
            if group.stored is not None:
                row = checked_row(row, group.stored, number, entry.line)
            try:
                full = planner.add_encoded(
                    provider, model, entry.line, encoded, entry.encode(), row
                )
            except RequestTooLarge as exc:
                log.warning(
                    "a follow-up does not fit a batch; its line keeps its result",
                    extra=fields(
                        job_id=source.job_id, chunk=source.index, line=entry.line, error=str(exc)
                    ),
                )
                continue
            if full is not None:
                staged.append(stager.stage(full))
        staged.extend(stager.stage(planned) for planned in planner.finish())
    return staged
