"""Planning one input file: read it once, stage its chunks, write what collect needs.

Every line is parsed and checked (`line_work`), and every request goes to the chunk
planner, whose chunks are staged as they fill (`staging`). Then the invalid lines'
results, the schemas the requests use and the plan record are written (their formats:
`domain/workfiles`). Planning runs under the job's lease (`plan`); every file it writes
has a deterministic name and content, so a planner that takes over an expired lease
redoes the same work harmlessly.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from batchline.bootstrap import Deps
from batchline.domain.estimate import Estimate
from batchline.domain.ids import generated_custom_id
from batchline.domain.lines import LineTooLong, UnreadableInput, iter_lines
from batchline.domain.models import Chunk, Job, Source
from batchline.domain.paths import WorkPaths
from batchline.domain.planning import PlannedChunk, SinkFailed
from batchline.domain.requests import InvalidLine, Request, SchemaContext
from batchline.domain.results import Tally, invalid_result_line
from batchline.domain.schemas import ResponseSchema
from batchline.domain.selection import Selector
from batchline.domain.workfiles.plan import PlanRecord, write_plan
from batchline.domain.workfiles.runs import write_invalid
from batchline.domain.workfiles.schemas import write_schema
from batchline.errors import NotFound
from batchline.services.line_work import LineWork, NotTheLine, schema_context, selector_for
from batchline.services.staging import ChunkStager

#: Lines read between two renewals of the planning lease (at most).
HEARTBEAT_LINES = 2000


@dataclass
class Plan:
    """What planning made of a file: its chunks (staged, committed later with the job), its
    line counts, the ids generated for lines without one that had to change, the invalid
    lines' tally, the pre-submit estimate and what `model: "auto"` chose."""

    chunks: list[Chunk]
    lines: int = 0
    blank_lines: int = 0
    invalid: int = 0
    requests: int = 0
    id_collisions: dict[int, str] = field(default_factory=dict)
    invalid_tally: Tally = field(default_factory=Tally)
    estimate: Estimate = field(default_factory=Estimate)
    #: Chooses the `model: "auto"` lines' models, and counts its choices.
    selector: Selector | None = None

    def estimate_section(self) -> dict[str, Any]:
        """summary.json's `estimate`: the estimate, and the models "auto" chose, with the
        lines each took and why (`auto`: `Selector.choices`)."""
        auto = self.selector.choices() if self.selector is not None else []
        return {**self.estimate.to_dict(), "auto": auto}

    def record(self) -> PlanRecord:
        """The plan record (`plan.json`) collect reads."""
        return PlanRecord(
            lines=self.lines,
            blank_lines=self.blank_lines,
            invalid=self.invalid,
            requests=self.requests,
            chunks=len(self.chunks),
            id_collisions=self.id_collisions,
            invalid_tally=self.invalid_tally,
            estimate=self.estimate_section(),
        )


@dataclass
class _Found:
    """What one pass over the input remembers beyond the chunks: the first line of each
    explicit custom_id, the lines without one, the invalid lines, the schemas in use."""

    explicit_ids: dict[str, int] = field(default_factory=dict)
    generated: list[int] = field(default_factory=list)
    invalid: list[tuple[InvalidLine, str | None]] = field(default_factory=list)
    schemas: dict[str, ResponseSchema] = field(default_factory=dict)


def _no_heartbeat() -> None:
    pass


def build_plan(deps: Deps, job: Job, heartbeat: Callable[[], None] = _no_heartbeat) -> Plan:
    """Read the job's input once and stage its chunks, invalid lines, schemas and plan
    record in the work bucket; the chunks' records are returned, not committed.

    Raises `UnreadableInput` for a file that cannot be planned as a whole (too large,
    empty, not UTF-8, corrupt compression, gone); `heartbeat` is called now and then
    (it renews the planning lease, and raises when the lease was lost).
    """
    settings = deps.settings
    source = job.source
    if source.size > settings.max_input_bytes:
        raise UnreadableInput(
            f"the file is {source.size} bytes; the limit is {settings.max_input_bytes} bytes"
        )
    if source.size == 0:
        raise UnreadableInput("the file is empty")
    paths = WorkPaths(settings.work_bucket, job.job_id)
    schemas = schema_context(deps, job)
    plan = Plan(chunks=[], estimate=Estimate(deps.prices), selector=selector_for(deps, job.options))
    found = _Found()
    try:
        _read_and_stage(deps, job, paths, schemas, plan, found, heartbeat)
    except NotTheLine as outside:
        raise outside.error from outside.error.__cause__
    except SinkFailed as failed:
        raise failed.error from failed.error.__cause__
    except NotFound as exc:
        raise UnreadableInput(f"the input object is gone: {exc}") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise UnreadableInput(f"the file cannot be decompressed: {exc}") from exc
    if plan.lines == 0:
        raise UnreadableInput("the file has no requests (only blank lines)")
    _write_records(deps, paths, plan, found)
    return plan


def _read_and_stage(
    deps: Deps,
    job: Job,
    paths: WorkPaths,
    schemas: SchemaContext,
    plan: Plan,
    found: _Found,
    heartbeat: Callable[[], None],
) -> None:
    """Every line of the input through its line's work; chunks staged as they fill."""
    stager = ChunkStager(deps, paths)
    estimate = plan.estimate
    planner = stager.planner(
        lambda request, line: estimate.add(request.provider, request.model, line)
    )
    explicit_ids, generated, invalid = found.explicit_ids, found.generated, found.invalid
    take = LineWork(
        planner,
        explicit_ids,
        schemas,
        default_model=job.options.model or deps.settings.default_model,
        max_line_bytes=deps.settings.max_line_bytes,
        enabled=deps.settings.enabled_providers,
        job_id=job.job_id,
        selector=plan.selector or selector_for(deps, job.options),
    ).take

    def stage(planned: PlannedChunk) -> None:
        heartbeat()
        plan.chunks.append(stager.stage(planned))

    with ExitStack() as stack:
        stack.enter_context(stager.abandoning(planner))
        for number, line in _input_lines(stack, deps, job.source):
            if isinstance(line, bytes) and not line.strip():
                plan.blank_lines += 1
                continue
            plan.lines += 1
            if plan.lines == 1 and isinstance(line, bytes) and not _is_utf8(line):
                # One bad line among good ones is that line's problem; a file whose
                # first line is not UTF-8 is in another encoding (or not text at all).
                raise UnreadableInput(f"the file is not UTF-8 text (line {number})")
            if plan.lines % HEARTBEAT_LINES == 0:
                heartbeat()
            outcome, full = take(number, line)
            if outcome.custom_id is None:
                generated.append(number)
            else:
                explicit_ids.setdefault(outcome.custom_id, number)
            if not isinstance(outcome, Request):
                invalid.append((outcome, outcome.custom_id))
                continue
            plan.requests += 1
            if outcome.schema is not None:
                found.schemas.setdefault(outcome.schema.digest, outcome.schema)
            if full is not None:
                stage(full)
        for planned in planner.finish():
            stage(planned)


def _input_lines(
    stack: ExitStack, deps: Deps, source: Source
) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """The input's lines, read as a stream (decompressed when it is gzip)."""
    raw = stack.enter_context(deps.blobs.open_read(source.uri, source.generation))
    stream: BinaryIO | gzip.GzipFile = raw
    if _is_gzip(source):
        stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
    return iter_lines(stream, deps.settings.max_line_bytes)


def _write_records(deps: Deps, paths: WorkPaths, plan: Plan, found: _Found) -> None:
    """The invalid lines' results, the schemas in use and the plan record, in that order
    (the plan record last: collect reads it first)."""
    taken = set(found.explicit_ids)
    plan.id_collisions = {
        n: generated_custom_id(n, taken) for n in found.generated if f"line-{n}" in taken
    }
    plan.invalid = len(found.invalid)
    rows = []
    for bad, custom_id in found.invalid:
        resolved = custom_id or plan.id_collisions.get(bad.line) or f"line-{bad.line}"
        record = invalid_result_line(bad, resolved)
        plan.invalid_tally.add(record)
        rows.append((bad.line, orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)))
    for schema in found.schemas.values():
        write_schema(deps.blobs, paths, schema)
    write_invalid(deps.blobs, paths, rows)
    write_plan(deps.blobs, paths.plan, plan.record())


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _is_gzip(source: Any) -> bool:
    return bool(source.name.endswith(".gz") or source.content_encoding == "gzip")
