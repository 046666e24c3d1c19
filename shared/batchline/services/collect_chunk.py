"""Collecting one chunk: its provider results, normalised, into sorted runs of result lines.

Results arrive in any order. Each is matched to its request by batchline's id, turned into
a result line (validated against its schema, priced, tallied) and serialised as it
streams in; the lines are buffered and written as sorted runs (`RunWriter`), so memory
stays near one run, not the chunk's parsed results. A request the provider gave no result
for gets one saying why (the batch expired, failed, was canceled, or never sent); a result
for a request that is not the chunk's means the batch is another chunk's (`MixUp`, put
right by `mixups.put_right`), and nothing of the chunk is committed. Answers
a follow-up round may help (an answer that failed its schema, a passing failure, a line
that fails over) are staged as the chunk's follow-ups (`follow_ups`). Each attempt writes its runs under a name of its own and
`collected.json` (create-if-absent) commits exactly one attempt, so a collect that dies
half-way, or two racing, can never mix their runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson

from batchline.bootstrap import Deps
from batchline.domain.claims import QUEUE_TIMEOUT
from batchline.domain.ids import line_of
from batchline.domain.models import BatchState, Chunk, ProviderResult, ResultStatus
from batchline.domain.paths import WorkPaths
from batchline.domain.pricing import price_for
from batchline.domain.results import Tally, provider_result_line
from batchline.domain.workfiles.collected import (
    CollectedRecord,
    FollowUp,
    read_collected,
    write_collected,
)
from batchline.domain.workfiles.manifest import ManifestEntry, read_manifest
from batchline.domain.workfiles.runs import RunWriter
from batchline.errors import NotFound
from batchline.log import fields, get_logger
from batchline.services.follow_ups import FollowUps, Stager
from batchline.services.mixups import MixUp
from batchline.services.round_rules import RoundRules

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


def collect_chunk(
    deps: Deps,
    paths: WorkPaths,
    chunk: Chunk,
    collisions: Mapping[int, str],
    rules: RoundRules,
) -> CollectedRecord:
    """Normalise one chunk into sorted runs of result lines, then commit `collected.json`,
    or return what an earlier attempt committed.

    Answers with a schema are validated (`rules.checks`); lines a follow-up round may help
    (repair, retry, failover: `rules`) are staged as the chunk's follow-ups
    (`follow_ups.Stager`), committed with its runs. `collisions` are the plan record's ids
    for lines without one.
    """
    committed = paths.collected(chunk.index)
    try:
        return read_collected(deps.blobs, committed)
    except NotFound:
        pass
    manifest = read_manifest(deps.blobs, chunk.manifest_uri, collisions)
    lines = _normaliser(deps, paths, chunk, manifest, rules)
    _every_result(deps, chunk, manifest, lines.emit)
    groups: list[FollowUp] = []
    if lines.noted:
        stager = Stager(deps, chunk, rules.checks.schema, lines.write)
        groups = stager.stage(paths, list(manifest), lines.writer.attempt, lines.noted)
    runs = lines.writer.finish()
    record = CollectedRecord(lines.tally, runs, tuple(groups))
    if not write_collected(deps.blobs, committed, record):
        # Another attempt committed first: use its runs, never a mix.
        return read_collected(deps.blobs, committed)
    log.info(
        "chunk collected",
        extra=fields(
            job_id=chunk.job_id,
            chunk=chunk.index,
            counts=lines.tally.counts,
            runs=len(runs),
            follow_ups={f"{g.reason} {g.provider}/{g.model}": g.requests for g in groups},
        ),
    )
    return record


class _Normaliser(NamedTuple):
    """`emit` makes the result line of (line, provider result), counts it (`tally`),
    notes what a follow-up round does with it (`noted`) and writes it (`write`, to
    `writer`), unless it may fail over: staging writes that one."""

    emit: Callable[[int, ProviderResult], None]
    write: Callable[[int, dict[str, Any]], None]
    writer: RunWriter
    tally: Tally
    noted: FollowUps


def _normaliser(
    deps: Deps,
    paths: WorkPaths,
    chunk: Chunk,
    manifest: dict[int, ManifestEntry],
    rules: RoundRules,
) -> _Normaliser:
    """The chunk's result-line maker (a closure: it runs for every result)."""
    writer = RunWriter(deps.blobs, paths, chunk.index)
    tally = Tally()
    noted = FollowUps()
    price = price_for(deps.prices, chunk.provider, chunk.model)  # one model per chunk
    reason = chunk.round_reason or "first"
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE

    def write(line: int, record: dict[str, Any]) -> None:
        writer.add(line, dumps(record, option=newline))

    def emit(line: int, result: ProviderResult) -> None:
        entry = manifest[line]
        check = None
        if entry.schema and result.status is ResultStatus.SUCCEEDED:
            check = rules.checks.check(entry.schema, chunk.provider, result)
        record, realtime = provider_result_line(
            custom_id=entry.custom_id or f"line-{line}",
            line=line,
            provider=chunk.provider,
            model=chunk.model,
            result=result,
            price=price,
            batch_id=chunk.batch_id,
            check=check,
            earlier=entry.earlier,
            previous=entry.previous,
            reason=reason,
            selected_by=entry.selected_by,
        )
        if entry.previous:
            tally.remove(entry.previous)  # the line an earlier round counted
        tally.add(record, realtime)
        settled = result.status is ResultStatus.SUCCEEDED and check is None
        if not settled and rules.note(noted, line, entry, record, realtime, check):
            return  # held: staging writes it
        write(line, record)

    return _Normaliser(emit, write, writer, tally, noted)


def _every_result(
    deps: Deps,
    chunk: Chunk,
    manifest: dict[int, ManifestEntry],
    emit: Callable[[int, ProviderResult], None],
) -> None:
    """`emit` each of the chunk's results, once per request: the provider's, then one for
    each request it gave none for. A result for a request that is not one of the chunk's
    raises MixUp: the batch is another chunk's, and the chunk's own requests never ran."""
    seen: set[int] = set()
    batch_state = chunk.batch_state
    batch_errors: tuple[str, ...] = ()
    if chunk.batch_id is not None:
        provider = deps.providers.get(chunk.provider)
        batch = provider.get_batch(chunk.batch_id)
        batch_state, batch_errors = batch.state, batch.errors
        for result in provider.iter_results(batch):
            line = line_of(result.request_id)
            if line is None or line not in manifest:
                raise MixUp(chunk, result.request_id)  # the batch is another's
            if line in seen:
                log.warning(
                    "result for a repeated request",
                    extra=fields(
                        job_id=chunk.job_id, chunk=chunk.index, request_id=result.request_id
                    ),
                )
                continue
            seen.add(line)
            emit(line, result)
    for line in sorted(manifest.keys() - seen):
        emit(line, _missing(line, chunk, batch_state, batch_errors))


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
    if state is BatchState.CANCELED and (chunk.error or "").startswith(QUEUE_TIMEOUT):
        error = {"type": QUEUE_TIMEOUT, "message": chunk.error, "retryable": False}
        return ProviderResult(request_id(line), ResultStatus.FAILED, error=error)
    status, kind, message, retryable = _MISSING.get(
        state or BatchState.FAILED, _MISSING[BatchState.FAILED]
    )
    if state is BatchState.FAILED and errors:
        message = f"{message}: {'; '.join(errors)}"
    return ProviderResult(
        request_id(line), status, error={"type": kind, "message": message, "retryable": retryable}
    )
