"""Turning ended provider batches into one ordered results.jsonl and a summary.

Each chunk is normalised on its own (results sorted by line, then a tally); the final
output is a k-way merge of the sorted chunk files and the invalid lines, streamed to the
output bucket. Every step writes under a deterministic name, so a collect that dies is
simply run again.
"""

from __future__ import annotations

import contextlib
import heapq
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import orjson

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change
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
from batchline.domain.pricing import price_for
from batchline.domain.results import Tally, provider_result_line
from batchline.errors import NotFound, PreconditionFailed
from batchline.log import fields, get_logger
from batchline.services import repair
from batchline.services.messages import publish_completed
from batchline.services.repair import Repairs, SchemaChecks
from batchline.services.summary import summary

log = get_logger(__name__)

# Size of one sorted run of result lines held in memory while collecting a chunk.
RUN_BYTES = 16 * 1024 * 1024

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
        publish_completed(deps, job)  # in case the last collect died before it
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
    runs = [paths.invalid]
    checks = SchemaChecks(deps, paths, _repair_limit(deps, job))
    pending: list[tuple[Chunk, Repairs]] = []
    repaired = {c.repair_of for c in chunks if c.repair_of is not None}
    for chunk in chunks:
        collected = collect_chunk(deps, paths, chunk, collisions, checks)
        tally.merge(collected.tally)
        runs.extend(collected.runs)  # chunk order: a re-ask's lines come after the first
        if collected.repairs is not None and chunk.index not in repaired:
            pending.append((chunk, collected.repairs))
    if pending and job.cancel_requested_at is None:
        return repair.start_round(deps, job, paths, chunks, pending)
    if not deps.blobs.exists(job.results_uri):
        with contextlib.suppress(PreconditionFailed):  # a concurrent collect wrote it
            _merge(deps, job, runs)
    state = _final_state(tally, canceled=job.cancel_requested_at is not None)
    batches = [
        {
            "chunk": c.index,
            "provider": c.provider,
            "model": c.model,
            "batch_id": c.batch_id,
            "state": str(c.batch_state) if c.batch_state else None,
            "requests": c.request_count,
            "error": c.error,
            **(
                {"repair_round": c.repair_round, "repair_of": c.repair_of} if c.repair_round else {}
            ),
        }
        for c in chunks
    ]
    body = summary(deps, job, state, tally, provider_batches=batches, estimate=plan.get("estimate"))
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


def _final_state(tally: Tally, *, canceled: bool) -> JobState:
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


def _repair_limit(deps: Deps, job: Job) -> int:
    if job.cancel_requested_at is not None:
        return 0  # nothing is asked again once the job is being canceled
    given = job.options.max_repair_attempts
    return deps.settings.max_repair_attempts if given is None else given


@dataclass(frozen=True)
class CollectedChunk:
    tally: Tally
    runs: list[str]  # sorted result files, to be merged
    repairs: Repairs | None = None  # answers that failed their schema, to ask again


def _committed(data: dict[str, Any]) -> CollectedChunk:
    repairs = data.get("repairs")
    return CollectedChunk(
        Tally.from_dict(data["tally"]),
        list(data["runs"]),
        Repairs.from_dict(repairs) if repairs else None,
    )


def collect_chunk(
    deps: Deps,
    paths: WorkPaths,
    chunk: Chunk,
    collisions: dict[int, str],
    checks: SchemaChecks,
) -> CollectedChunk:
    """Normalise one chunk into sorted runs of result lines, then `collected.json`.

    Answers with a schema are validated (`checks`); invalid ones the job may ask again
    are staged as the chunk's re-asks (`repair.stage`), committed with its runs.

    Results arrive in any order. They are normalised and serialised as they stream in,
    buffered up to RUN_BYTES, and written as sorted runs; the merge does the rest. Memory
    stays near one run, not the chunk's parsed results. Each attempt writes its runs under
    a name of its own and `collected.json` (create-if-absent) commits exactly one attempt,
    so a collect that dies half-way, or two racing, can never mix their runs.
    """
    try:
        return _committed(orjson.loads(deps.blobs.read_bytes(paths.collected(chunk.index))))
    except NotFound:
        pass
    manifest: dict[int, repair.Entry] = {}
    digests: dict[str, str] = {}  # one string per schema, not one per line
    for raw in deps.blobs.read_bytes(chunk.manifest_uri).splitlines():
        data = orjson.loads(raw)
        line = data["line"]
        schema = data.get("schema")
        manifest[line] = repair.Entry(
            data["custom_id"] or collisions.get(line) or f"line-{line}",
            digests.setdefault(schema, schema) if schema else None,
            data.get("attempts"),
            data.get("previous"),
        )
    writer = _RunWriter(deps, paths, chunk.index)
    tally = Tally()
    asks = repair.Asks()
    price = price_for(deps.prices, chunk.provider, chunk.model)  # one model per chunk

    def emit(line: int, result: ProviderResult) -> None:
        entry = manifest[line]
        check = None
        if entry.schema and result.status is ResultStatus.SUCCEEDED:
            check = checks.check(entry.schema, chunk.provider, result)
        record, realtime = provider_result_line(
            custom_id=entry.custom_id,
            line=line,
            provider=chunk.provider,
            model=chunk.model,
            result=result,
            price=price,
            batch_id=chunk.batch_id,
            check=check,
            earlier=entry.earlier,
        )
        if entry.previous:
            tally.remove(entry.previous)  # the line an earlier round counted
        tally.add(record, realtime)
        violation = check.violation if check is not None else None
        if violation is not None and len(record["attempts"]) <= checks.max_repairs:
            asks.add(line, entry, record, realtime, violation)
        writer.add(line, orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    seen: set[int] = set()
    batch_state = chunk.batch_state
    batch_errors: tuple[str, ...] = ()
    if chunk.batch_id is not None:
        provider = deps.providers.get(chunk.provider)
        batch = provider.get_batch(chunk.batch_id)
        batch_state, batch_errors = batch.state, batch.errors
        for result in provider.iter_results(batch):
            line = line_of(result.request_id)
            if line is None or line not in manifest or line in seen:
                log.warning(
                    "result for an unknown or repeated request",
                    extra=fields(
                        job_id=chunk.job_id, chunk=chunk.index, request_id=result.request_id
                    ),
                )
                continue
            seen.add(line)
            emit(line, result)
    for line in sorted(manifest.keys() - seen):
        emit(line, _missing(line, chunk, batch_state, batch_errors))
    runs = writer.finish()
    repairs = (
        repair.stage(deps, paths, chunk, list(manifest), writer.attempt, asks) if asks else None
    )
    committed: dict[str, Any] = {"tally": tally.to_dict(), "runs": runs}
    if repairs is not None:
        committed["repairs"] = repairs.to_dict()
    if not deps.blobs.write_bytes(
        paths.collected(chunk.index), orjson.dumps(committed), "application/json"
    ):
        # Another attempt committed first: use its runs, never a mix.
        return _committed(orjson.loads(deps.blobs.read_bytes(paths.collected(chunk.index))))
    log.info(
        "chunk collected",
        extra=fields(
            job_id=chunk.job_id,
            chunk=chunk.index,
            counts=tally.counts,
            runs=len(runs),
            reasks=len(asks),
        ),
    )
    return CollectedChunk(tally, runs, repairs)


class _RunWriter:
    """Buffers (line, record) pairs and writes them out as sorted runs."""

    def __init__(self, deps: Deps, paths: WorkPaths, index: int) -> None:
        self._deps = deps
        self._paths = paths
        self._index = index
        self.attempt = uuid.uuid4().hex[:12]
        self._buffer: list[tuple[int, bytes]] = []
        self._size = 0
        self.runs: list[str] = []

    def add(self, line: int, record: bytes) -> None:
        entry = b"%d\t%b" % (line, record)
        self._buffer.append((line, entry))
        self._size += len(entry)
        if self._size >= RUN_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        self._buffer.sort(key=lambda pair: pair[0])
        data = b"".join([entry for _, entry in self._buffer])
        self._buffer = []
        self._size = 0
        uri = self._paths.results_run(self._index, self.attempt, len(self.runs))
        self._deps.blobs.write_bytes(uri, data, "text/tab-separated-values")
        self.runs.append(uri)

    def finish(self) -> list[str]:
        self._flush()
        return self.runs


def _missing(
    line: int, chunk: Chunk, state: BatchState | None, errors: tuple[str, ...]
) -> ProviderResult:
    from batchline.domain.ids import request_id

    if chunk.batch_id is None and state is BatchState.CANCELED:
        error: dict[str, Any] = {
            "type": "job_canceled",
            "message": "the job was canceled before this request was submitted",
            "retryable": False,
        }
        return ProviderResult(request_id(line), ResultStatus.CANCELED, error=error)
    if chunk.batch_id is None:
        error = {
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


def _merge(deps: Deps, job: Job, runs: list[str]) -> None:
    """k-way merge of sorted runs into results.jsonl, streamed in and out.

    A re-asked line is in the runs of every round that asked it; `runs` are in chunk order
    and re-ask chunks come after the chunks they repair, and of equal lines the one from
    the later run sorts last: the newest, the one written.
    """
    with ExitStack() as stack:
        readers = [
            _records(stack.enter_context(deps.blobs.open_read(uri)), run)
            for run, uri in enumerate(runs)
        ]
        out = stack.enter_context(deps.blobs.open_write(job.results_uri, "application/jsonl"))
        held_line, held = -1, b""
        for line, _, record in heapq.merge(*readers):
            if line != held_line and held:
                out.write(held)
            held_line, held = line, record
        if held:
            out.write(held)


def _records(stream: Any, run: int) -> Iterator[tuple[int, int, bytes]]:
    """(line, run, record): of equal lines, the later run's sorts last."""
    for raw in stream:
        number, _, record = raw.partition(b"\t")
        yield int(number), run, record
