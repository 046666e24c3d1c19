"""Turning ended provider batches into one ordered results.jsonl and a summary.

Each chunk is normalised on its own (results sorted by line, then a tally); the final
output is a k-way merge of the sorted chunk files and the invalid lines, streamed to the
output bucket. Every step writes under a deterministic name, so a collect that dies is
simply run again.
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import orjson

from batchline.bootstrap import Deps
from batchline.domain.ids import line_of
from batchline.domain.models import (
    BatchState,
    Chunk,
    Job,
    JobState,
    ProviderResult,
    ResultStatus,
)
from batchline.domain.paths import WorkPaths
from batchline.domain.results import Tally, provider_result_line
from batchline.errors import NotFound, PreconditionFailed
from batchline.log import fields, get_logger
from batchline.services import reporting

log = get_logger(__name__)

_MISSING = {
    BatchState.EXPIRED: (
        ResultStatus.EXPIRED,
        "batch_expired",
        "the batch expired before this request ran",
        True,
    ),
    BatchState.CANCELED: (
        ResultStatus.CANCELED,
        "batch_canceled",
        "the batch was canceled before this request ran",
        False,
    ),
    BatchState.FAILED: (ResultStatus.FAILED, "batch_failed", "the batch failed", False),
    BatchState.COMPLETED: (
        ResultStatus.FAILED,
        "missing_result",
        "the provider returned no result for this request",
        True,
    ),
}


def collect(deps: Deps, job_id: str) -> Job | None:
    job = deps.store.get_job(job_id)
    if job is None:
        log.warning("collect for an unknown job", extra=fields(job_id=job_id))
        return None
    if job.state.terminal:
        reporting.publish_completed(deps, job)  # in case the last collect died before it
        return job
    if job.state is not JobState.COLLECTING:
        log.info(
            "collect before the job is ready; ignored",
            extra=fields(job_id=job_id, state=str(job.state)),
        )
        return job
    paths = WorkPaths(deps.settings.work_bucket, job_id)
    plan = orjson.loads(deps.blobs.read_bytes(paths.plan))
    collisions = {int(k): v for k, v in plan["id_collisions"].items()}
    chunks = deps.store.get_chunks(job_id)
    tally = Tally.from_dict(plan["invalid_tally"])
    for chunk in chunks:
        tally.merge(collect_chunk(deps, paths, chunk, collisions))
    if not deps.blobs.exists(job.results_uri):
        with contextlib.suppress(PreconditionFailed):  # a concurrent collect wrote it
            _merge(deps, paths, job, chunks)
    state = _final_state(tally)
    batches = [
        {
            "chunk": c.index,
            "provider": c.provider,
            "model": c.model,
            "batch_id": c.batch_id,
            "state": str(c.batch_state) if c.batch_state else None,
            "requests": c.request_count,
            "error": c.error,
        }
        for c in chunks
    ]
    body = reporting.summary(deps, job, state, tally, provider_batches=batches)
    deps.blobs.write_bytes(
        job.summary_uri, orjson.dumps(body, option=orjson.OPT_INDENT_2), "application/json"
    )
    now = deps.clock.now()
    counts = {**job.counts, **tally.counts}

    def finish(current: Job) -> Job | None:
        if current.state is not JobState.COLLECTING:
            return None
        return current.to(
            state,
            now,
            counts=counts,
            usage={"input_tokens": tally.input_tokens, "output_tokens": tally.output_tokens},
            cost_usd=round(tally.cost_usd, 10),
            ended_at=now,
        )

    done = deps.store.update_job(job_id, finish) or deps.store.get_job(job_id)
    if done is not None and done.state.terminal:
        reporting.publish_completed(deps, done)
    return done


def _final_state(tally: Tally) -> JobState:
    succeeded = tally.counts.get(str(ResultStatus.SUCCEEDED), 0)
    if succeeded == tally.total and succeeded > 0:
        return JobState.SUCCEEDED
    if succeeded == 0:
        return JobState.FAILED
    return JobState.PARTIAL


def collect_chunk(deps: Deps, paths: WorkPaths, chunk: Chunk, collisions: dict[int, str]) -> Tally:
    """Normalise one chunk into `results.tsv` + `tally.json`; reuse them when present."""
    try:
        return Tally.from_dict(orjson.loads(deps.blobs.read_bytes(paths.tally(chunk.index))))
    except NotFound:
        pass
    manifest: dict[int, str] = {}
    for raw in deps.blobs.read_bytes(chunk.manifest_uri).splitlines():
        entry = orjson.loads(raw)
        line = entry["line"]
        manifest[line] = entry["custom_id"] or collisions.get(line) or f"line-{line}"
    results: dict[int, ProviderResult] = {}
    batch_state = chunk.batch_state
    batch_errors: tuple[str, ...] = ()
    if chunk.batch_id is not None:
        provider = deps.providers.get(chunk.provider)
        batch = provider.get_batch(chunk.batch_id)
        batch_state, batch_errors = batch.state, batch.errors
        for result in provider.iter_results(batch):
            line = line_of(result.request_id)
            if line in manifest:
                results[line] = result
            else:
                log.warning(
                    "result for an unknown request",
                    extra=fields(
                        job_id=chunk.job_id, chunk=chunk.index, request_id=result.request_id
                    ),
                )
    tally = Tally()
    out = bytearray()
    for line in sorted(manifest):
        result = results.get(line) or _missing(line, chunk, batch_state, batch_errors)
        record = provider_result_line(
            custom_id=manifest[line],
            line=line,
            provider=chunk.provider,
            model=chunk.model,
            result=result,
            prices=deps.prices,
        )
        tally.add(record)
        out += b"%d\t" % line + orjson.dumps(record) + b"\n"
    deps.blobs.write_bytes(paths.results(chunk.index), bytes(out), "text/tab-separated-values")
    deps.blobs.write_bytes(
        paths.tally(chunk.index), orjson.dumps(tally.to_dict()), "application/json"
    )
    log.info(
        "chunk collected", extra=fields(job_id=chunk.job_id, chunk=chunk.index, counts=tally.counts)
    )
    return tally


def _missing(
    line: int, chunk: Chunk, state: BatchState | None, errors: tuple[str, ...]
) -> ProviderResult:
    from batchline.domain.ids import request_id

    if chunk.batch_id is None:
        error: dict[str, Any] = {
            "type": "submit_failed",
            "message": chunk.error or "the batch could not be created",
            "retryable": False,
        }
        return ProviderResult(request_id(line), ResultStatus.FAILED, error=error)
    status, kind, message, retryable = _MISSING.get(
        state or BatchState.FAILED, _MISSING[BatchState.FAILED]
    )
    if state is BatchState.FAILED and errors:
        message = f"{message}: {'; '.join(errors)}"
    return ProviderResult(
        request_id(line), status, error={"type": kind, "message": message, "retryable": retryable}
    )


def _merge(deps: Deps, paths: WorkPaths, job: Job, chunks: list[Chunk]) -> None:
    sources = [paths.invalid] + [paths.results(c.index) for c in chunks]
    with ExitStack() as stack:
        readers = [_records(stack.enter_context(deps.blobs.open_read(uri))) for uri in sources]
        out = stack.enter_context(deps.blobs.open_write(job.results_uri, "application/jsonl"))
        for _, record in heapq.merge(*readers):
            out.write(record)


def _records(stream: Any) -> Iterator[tuple[int, bytes]]:
    for raw in stream:
        number, _, record = raw.partition(b"\t")
        yield int(number), record
