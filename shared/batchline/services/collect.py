"""Turning ended provider batches into one ordered results.jsonl and a summary.

Each chunk is collected on its own (`collect_chunk`: results sorted by line, then a
tally); when some answers failed their schema and may be asked again, a repair round
starts instead (`repair.plan_round`, `repair.start_round`); otherwise the sorted runs of
every chunk and the invalid lines are merged, streamed, into results.jsonl (`merge`) and
the job finishes (`finish`). Every step writes under a deterministic name, so a collect
that dies is simply run again.
"""

from __future__ import annotations

import contextlib

from batchline.bootstrap import Deps
from batchline.domain.models import Chunk, Job, JobState
from batchline.domain.paths import WorkPaths
from batchline.domain.results import Tally
from batchline.domain.workfiles.collected import Repairs
from batchline.domain.workfiles.plan import PlanRecord, read_plan
from batchline.errors import PreconditionFailed
from batchline.log import fields, get_logger
from batchline.services.collect_chunk import collect_chunk
from batchline.services.finish import finish_job
from batchline.services.merge import merge_runs
from batchline.services.messages import publish_completed
from batchline.services.repair import SchemaChecks, plan_round, start_round

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
    tally, runs, pending = _collect_chunks(deps, job, paths, plan, chunks)
    if pending and job.cancel_requested_at is None:
        new = plan_round(deps, paths, chunks, pending)
        if new:  # (none: no repair fits a batch; their lines keep their answers)
            return start_round(deps, job, chunks, new, pending)
    if not deps.blobs.exists(job.results_uri):
        with contextlib.suppress(PreconditionFailed):  # a concurrent collect wrote it
            merge_runs(deps, job.results_uri, runs)
    return finish_job(deps, job, chunks, tally, plan)


def _collect_chunks(
    deps: Deps, job: Job, paths: WorkPaths, plan: PlanRecord, chunks: list[Chunk]
) -> tuple[Tally, list[str], list[tuple[Chunk, Repairs]]]:
    """Collect every chunk: the job's tally, every sorted run to merge (the invalid lines
    first, then chunk order), and the chunks whose repairs no chunk answers yet."""
    tally = plan.invalid_tally
    runs = [paths.invalid]
    checks = SchemaChecks(deps, paths, _repair_limit(deps, job))
    pending: list[tuple[Chunk, Repairs]] = []
    repaired = {c.repair_of for c in chunks if c.repair_of is not None}
    for chunk in chunks:
        collected = collect_chunk(deps, paths, chunk, plan.id_collisions, checks)
        tally.merge(collected.tally)
        runs.extend(collected.runs)  # chunk order: a repair's lines come after the first
        if collected.repairs is not None and chunk.index not in repaired:
            pending.append((chunk, collected.repairs))
    return tally, runs, pending


def _repair_limit(deps: Deps, job: Job) -> int:
    if job.cancel_requested_at is not None:
        return 0  # nothing is asked again once the job is being canceled
    given = job.options.max_repair_attempts
    return deps.settings.max_repair_attempts if given is None else given
