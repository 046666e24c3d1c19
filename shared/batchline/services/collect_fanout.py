"""Collect that scales out: one invocation per chunk, then the job's merge.

A job's collect message (`{"job_id"}`) no longer collects every chunk in turn: it
publishes one message per chunk not yet collected (`{"job_id", "chunk"}`) to the same
topic (`fan_out`). Each chunk message normalises that chunk's results in its own
invocation (`collect_one`: `collect_chunk`, which commits `collected.json` once, so a
chunk collected twice writes nothing twice), and the invocation that finds every chunk
collected goes on with the job's step (`collect.collect`: the next round, or the streamed
merge and the finish), which reads each chunk's committed record instead of its results.

Every step is safe to repeat: a fan-out that dies half-way is redelivered and publishes
again; two invocations that both find the last chunk collected both run the job's step,
whose round start and finish are transactions and whose merge is create-if-absent.
"""

from __future__ import annotations

from batchline.bootstrap import Deps
from batchline.domain.models import Job, JobState
from batchline.domain.paths import WorkPaths
from batchline.domain.workfiles.plan import read_plan
from batchline.log import fields, get_logger
from batchline.services.collect import collect
from batchline.services.collect_chunk import collect_chunk
from batchline.services.mixups import MixUp
from batchline.services.round_rules import RoundRules

log = get_logger(__name__)


def fan_out(deps: Deps, job_id: str) -> Job | None:
    """Publish a collect message for each chunk of `job_id` not yet collected; when every
    chunk is (or the job is not collecting), go on with the job's step at once."""
    job = deps.store.get_job(job_id)
    if job is None or job.state is not JobState.COLLECTING:
        return collect(deps, job_id)  # unknown, ended or not ready: collect says so
    paths = WorkPaths(deps.settings.work_bucket, job_id)
    waiting = [
        c.index
        for c in deps.store.get_chunks(job_id)
        if not deps.blobs.exists(paths.collected(c.index))
    ]
    if not waiting:
        return collect(deps, job_id)
    for index in waiting:
        message = {"job_id": job_id, "chunk": index}
        deps.publisher.publish(deps.settings.collect_topic, message, job_id=job_id)
    log.info("collect fanned out", extra=fields(job_id=job_id, chunks=len(waiting)))
    return job


def collect_one(deps: Deps, job_id: str, index: int) -> Job | None:
    """Collect chunk `index` of `job_id`; the job's step when it was the last one."""
    job = deps.store.get_job(job_id)
    if job is not None and job.state.terminal:
        # The invocation that ended the job may have died before its event and webhook
        # went out: a redelivered chunk message publishes them (collect does, once).
        return collect(deps, job_id)
    if job is None or job.state is not JobState.COLLECTING:
        log.info("chunk collect for a job not collecting; ignored", extra=fields(job_id=job_id))
        return job
    chunks = deps.store.get_chunks(job_id)
    chunk = next((c for c in chunks if c.index == index), None)
    if chunk is None:
        log.warning("collect for an unknown chunk", extra=fields(job_id=job_id, chunk=index))
        return job
    paths = WorkPaths(deps.settings.work_bucket, job_id)
    plan = read_plan(deps.blobs, paths.plan)
    try:
        collect_chunk(deps, paths, chunk, plan.id_collisions, RoundRules.of(deps, job, paths))
    except MixUp:
        return collect(deps, job_id)  # the job's step puts the mix-up right
    if all(deps.blobs.exists(paths.collected(c.index)) for c in chunks):
        return collect(deps, job_id)
    return job
