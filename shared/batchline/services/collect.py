"""Turning ended provider batches into one ordered results.jsonl and a summary.

Each chunk is collected on its own (`collect_chunk`: results sorted by line, then a
tally). A chunk whose batch holds another chunk's requests is put right first, and its
own requests sent (`mixups.put_right`); when some lines may be helped by a follow-up
round (repair, retry, failover: `domain/rounds.py`) that no chunk answers yet, the round
starts (`rounds.plan_round`, `rounds.start_round`) unless it would break the job's budget;
otherwise the sorted runs of every chunk and the invalid lines are merged, streamed, into
results.jsonl (`merge`) and the job finishes (`finish`). Every step writes under a
deterministic name, so a collect that dies is simply run again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from typing import NamedTuple

from batchline.bootstrap import Deps
from batchline.domain.models import Chunk, Job, JobState
from batchline.domain.paths import WorkPaths
from batchline.domain.results import Tally
from batchline.domain.workfiles.collected import FollowUp
from batchline.domain.workfiles.manifest import read_manifest
from batchline.domain.workfiles.plan import PlanRecord, read_plan
from batchline.errors import PreconditionFailed
from batchline.log import fields, get_logger
from batchline.services.collect_chunk import collect_chunk
from batchline.services.finish import finish_job
from batchline.services.merge import merge_runs
from batchline.services.messages import publish_completed
from batchline.services.mixups import MixUp, put_right
from batchline.services.round_rules import RoundRules
from batchline.services.rounds import decline, over_budget, plan_round, start_round

log = get_logger(__name__)


def collect(deps: Deps, job_id: str) -> Job | None:
    """Collect a job in `collecting`: start its next repair round, or write its results
    and summary and finish it. Anything else is left alone (a finished job's event is
    published again, in case the collect that finished it died before it)."""
    job = deps.store.get_job(job_id)
    if job is None:
        log.warning("collect for an unknown job", extra=fields(job_id=job_id))
        return None
    if job.state.terminal:
        publish_completed(deps, job)  # in case the last collect died before it
        return job
    if job.state is not JobState.COLLECTING:
        log.info(
            "collect before the job is ready; ignored",
            extra=fields(job_id=job_id, state=str(job.state)),
        )
        return job
    paths = WorkPaths(deps.settings.work_bucket, job_id)
    plan = read_plan(deps.blobs, paths.plan)
    chunks = deps.store.get_chunks(job_id)
    tally, runs, pending, mixed, by_chunk = _collect_chunks(deps, job, paths, plan, chunks)
    if mixed:  # a chunk's batch is another's: put the records right, send what never ran
        return put_right(deps, job, chunks, mixed, _lines_of(deps))
    if pending and job.cancel_requested_at is None:
        why = over_budget(job, tally.cost_usd, pending)
        if why is None:
            new = plan_round(deps, paths, chunks, pending)
            if new:  # (none: nothing fits a batch; their lines keep their results)
                return start_round(deps, job, chunks, new)
        else:
            runs.extend(decline(deps, pending, by_chunk, why))
    if not deps.blobs.exists(job.results_uri):
        with contextlib.suppress(PreconditionFailed):  # a concurrent collect wrote it
            merge_runs(deps, job.results_uri, runs)
    return finish_job(deps, job, chunks, tally, plan)


class _Collected(NamedTuple):
    """Every chunk collected: the job's tally, every sorted run to merge (the invalid
    lines first, then chunk order), the follow-ups no chunk answers yet (with their
    chunk), the chunks whose batch turned out to be another's, and each chunk's runs."""

    tally: Tally
    runs: list[str]
    pending: list[tuple[Chunk, FollowUp]]
    mixed: list[MixUp]
    by_chunk: dict[int, list[str]]


def _collect_chunks(
    deps: Deps, job: Job, paths: WorkPaths, plan: PlanRecord, chunks: list[Chunk]
) -> _Collected:
    """Collect every chunk (see `_Collected`)."""
    done = _Collected(plan.invalid_tally, [paths.invalid], [], [], {})
    rules = RoundRules.of(deps, job, paths)
    followed = {c.round_of for c in chunks if c.round_of is not None}
    for chunk in chunks:
        try:
            collected = collect_chunk(deps, paths, chunk, plan.id_collisions, rules)
        except MixUp as mixup:
            done.mixed.append(mixup)
            continue
        done.tally.merge(collected.tally)
        done.runs.extend(collected.runs)  # chunk order: a round's lines come after the last
        done.by_chunk[chunk.index] = collected.runs
        if chunk.index not in followed:
            done.pending.extend((chunk, group) for group in collected.follow_ups)
    return done


def _lines_of(deps: Deps) -> Callable[[Chunk], Collection[int]]:
    """A chunk's lines, from its manifest (to find whose lines a mixed-up batch holds)."""
    return lambda chunk: read_manifest(deps.blobs, chunk.manifest_uri).keys()
