"""Repairing answers that failed their schema, in follow-up batches to the same provider.

While a chunk is collected, each answer with a schema is validated (`SchemaChecks`). An
invalid one is written as `failed` (`schema_validation`) like any other line, and, while
the job allows more attempts, noted (`Asks`). `stage` then reads the chunk's staged
payload once and writes the noted requests again, each with its previous answer and what
was wrong with it appended to the conversation, beside the chunk's runs, with their
manifest rows and stored requests; the chunk's `collected.json` commits them with the
rest. When every chunk is collected and some have repairs that no chunk answers yet,
`plan_round` has the chunk planner cut them into new chunks under the provider's limits,
as it cuts the first round's, and `start_round` commits them and moves the job back to
running, in one transaction; poll submits them like any chunk, and the next collect
replaces the repaired lines with the new answer (the result line lists every attempt).
Every name is deterministic and every write create-if-absent, so racing or repeated
collects stage the same round once.
"""

from __future__ import annotations

import io
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change
from batchline.domain.models import Chunk, Job, ProviderResult
from batchline.domain.paths import WorkPaths
from batchline.domain.planning import RequestTooLarge
from batchline.domain.providers import registry
from batchline.domain.results import superseded
from batchline.domain.schemas import (
    SchemaCheck,
    Validator,
    Violation,
    repair_feedback,
)
from batchline.domain.workfiles.collected import Repairs
from batchline.domain.workfiles.manifest import ManifestEntry, open_manifest, write_manifest
from batchline.domain.workfiles.payload import open_payload, write_payload
from batchline.domain.workfiles.requests import checked_row, open_rows, write_stored
from batchline.domain.workfiles.schemas import read_schema
from batchline.log import fields, get_logger
from batchline.services.staging import ChunkStager

log = get_logger(__name__)


class SchemaChecks:
    """Compiled validators of one job's schemas, loaded from the work bucket on first use."""

    def __init__(self, deps: Deps, paths: WorkPaths, max_repairs: int) -> None:
        self._deps = deps
        self._paths = paths
        self.max_repairs = max_repairs
        self._validators: dict[tuple[str, str], Validator] = {}

    def check(self, digest: str, provider: str, result: ProviderResult) -> SchemaCheck:
        """Validate `result`'s answer against the job's schema of digest `digest`."""
        validator = self._validators.get((digest, provider))
        if validator is None:
            validator = self._load(digest, provider)
        return validator.check(result.text, result.structured)

    def _load(self, digest: str, provider: str) -> Validator:
        schema = read_schema(self._deps.blobs, self._paths, digest)
        # OpenAI strict mode answers `null` for optional properties: drop those again.
        strict = registry.provider(provider).strips_nulls(schema)
        validator = self._validators[digest, provider] = Validator(schema, strip_nulls=strict)
        return validator


@dataclass
class Asks:
    """The lines of one chunk to ask again: line -> (manifest entry, answer, feedback)."""

    lines: dict[int, tuple[ManifestEntry, str, str]] = field(default_factory=dict)

    def add(
        self,
        line: int,
        entry: ManifestEntry,
        record: dict[str, Any],
        realtime_usd: float | None,
        violation: Violation,
    ) -> None:
        """Note line `line` (its manifest `entry`, its result line `record`) to ask again."""
        answer = record["output"]["text"] if record.get("output") else None
        next_entry = ManifestEntry(
            line,
            entry.custom_id,
            entry.schema,
            record["attempts"],
            superseded(record, realtime_usd),
        )
        self.lines[line] = (next_entry, answer or "", repair_feedback(violation))

    def __len__(self) -> int:
        return len(self.lines)


def stage(
    deps: Deps, paths: WorkPaths, chunk: Chunk, order: list[int], attempt: str, asks: Asks
) -> Repairs:
    """Write the chunk's repairs: its staged request lines, each with a repair turn, their
    manifest rows and their stored requests (when the chunk has them).

    `order` is the line of each staged request, in payload order (the chunk's manifest).
    """
    add_turn = deps.repair_turn(chunk.provider)
    payload, manifest, stored = io.BytesIO(), io.BytesIO(), io.BytesIO()
    with ExitStack() as stack:
        staged = stack.enter_context(open_payload(deps.blobs, chunk.payload_uri))
        rows = stack.enter_context(open_rows(deps.blobs, chunk.requests_uri))
        for number, (line, raw) in enumerate(zip(order, staged, strict=False), 1):
            row = next(rows, b"")
            ask = asks.lines.get(line)
            if ask is None:
                continue
            entry, answer, feedback = ask
            request = orjson.loads(raw)
            add_turn(request, answer, feedback)
            payload.write(orjson.dumps(request, option=orjson.OPT_APPEND_NEWLINE))
            manifest.write(entry.encode())
            if chunk.requests_uri is not None:
                stored.write(checked_row(row, chunk.requests_uri, number, line))
    repairs = Repairs(
        paths.repairs(chunk.index, attempt),
        paths.repairs_manifest(chunk.index, attempt),
        len(asks),
        paths.repairs_requests(chunk.index, attempt) if chunk.requests_uri else None,
    )
    write_payload(deps.blobs, repairs.payload, payload.getvalue())
    write_manifest(deps.blobs, repairs.manifest, manifest.getvalue())
    if repairs.stored is not None:
        write_stored(deps.blobs, repairs.stored, stored.getvalue())
    return repairs


def plan_round(
    deps: Deps, paths: WorkPaths, chunks: list[Chunk], pending: list[tuple[Chunk, Repairs]]
) -> list[Chunk]:
    """Cut and stage the pending repairs as the next chunks (not yet committed); none when
    no repair fits a batch any more."""
    new: list[Chunk] = []
    for source, repairs in pending:
        new.extend(_plan_repairs(deps, paths, source, repairs, len(chunks) + len(new)))
    return new


def start_round(
    deps: Deps,
    job: Job,
    chunks: list[Chunk],
    new: list[Chunk],
    pending: list[tuple[Chunk, Repairs]],
) -> Job | None:
    """Commit the repair chunks `new` (`plan_round`) and move the job back to running."""
    now = deps.clock.now()
    reopen = Change(claims.reopen_for_repair, now, chunk_count=len(chunks), new_chunks=len(new))
    reopened = deps.store.update_job(job.job_id, reopen, new_chunks=new)
    if reopened is None:
        return deps.store.get_job(job.job_id)
    log.info(
        "repairing answers that failed their schema",
        extra=fields(
            job_id=job.job_id,
            requests=sum(r.requests for _, r in pending),
            chunks=len(new),
        ),
    )
    return reopened


def _plan_repairs(
    deps: Deps, paths: WorkPaths, source: Chunk, repairs: Repairs, index: int
) -> list[Chunk]:
    """Cut one chunk's staged repairs into chunks `index`, `index + 1`, ... (the chunk
    planner, as for the first round) and stage them."""
    stager = ChunkStager(
        deps,
        paths,
        index,
        repair_round=source.repair_round + 1,
        repair_of=source.index,
        store_requests=repairs.stored is not None,
    )
    planner = stager.planner()
    staged: list[Chunk] = []
    with ExitStack() as stack:
        stack.enter_context(stager.abandoning(planner))
        lines = stack.enter_context(open_payload(deps.blobs, repairs.payload))
        entries = stack.enter_context(open_manifest(deps.blobs, repairs.manifest))
        rows = stack.enter_context(open_rows(deps.blobs, repairs.stored))
        for number, (encoded, entry) in enumerate(zip(lines, entries, strict=True), 1):
            row = next(rows, b"")
            if repairs.stored is not None:
                row = checked_row(row, repairs.stored, number, entry.line)
            try:
                full = planner.add_encoded(
                    source.provider, source.model, entry.line, encoded, entry.encode(), row
                )
            except RequestTooLarge as exc:
                log.warning(
                    "a repair does not fit a batch; its line keeps the failed answer",
                    extra=fields(
                        job_id=source.job_id, chunk=source.index, line=entry.line, error=str(exc)
                    ),
                )
                continue
            if full is not None:
                staged.append(stager.stage(full))
        staged.extend(stager.stage(planned) for planned in planner.finish())
    return staged
