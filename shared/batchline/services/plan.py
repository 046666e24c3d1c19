"""Planning a job: read its input once, stage chunks and invalid lines in the work bucket.

Planning runs under the job's lease. Every file it writes has a deterministic name and
content, so a planner that takes over an expired lease redoes the same work harmlessly.
"""

from __future__ import annotations

import gzip
import uuid
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change, LeaseTerms
from batchline.domain.estimate import Estimate
from batchline.domain.ids import generated_custom_id
from batchline.domain.jsonscan import TopLevelIdScanner
from batchline.domain.lines import LineTooLong, UnreadableInput, iter_lines
from batchline.domain.models import Chunk, Job, JobState
from batchline.domain.options import default_schema_of
from batchline.domain.paths import WorkPaths, registered_schema_uri
from batchline.domain.planning import ChunkPlanner, PlannedChunk, RequestRefused, describe_error
from batchline.domain.requests import InvalidLine, Request, SchemaContext, parse_line
from batchline.domain.results import Tally, invalid_result_line
from batchline.domain.schemas import ResponseSchema, SchemaError
from batchline.errors import NotFound
from batchline.log import fields, get_logger
from batchline.services import messages
from batchline.services.leases import Keeper, LeaseLost, contended
from batchline.services.reject import reject

log = get_logger(__name__)

HEARTBEAT_LINES = 2000


@dataclass
class Plan:
    chunks: list[Chunk]
    lines: int = 0
    blank_lines: int = 0
    invalid: int = 0
    requests: int = 0
    id_collisions: dict[int, str] = field(default_factory=dict)
    invalid_tally: Tally = field(default_factory=Tally)
    estimate: Estimate = field(default_factory=Estimate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "blank_lines": self.blank_lines,
            "invalid": self.invalid,
            "requests": self.requests,
            "chunks": len(self.chunks),
            "id_collisions": {str(k): v for k, v in self.id_collisions.items()},
            "invalid_tally": self.invalid_tally.to_dict(),
            "estimate": self.estimate.to_dict(),
        }


def new_owner() -> str:
    return uuid.uuid4().hex


def plan_job(deps: Deps, job_id: str, owner: str) -> Job | None:
    """Take the planning lease and plan; None when there is nothing (left) to plan, or
    when another live invocation holds the lease (it plans; if it dies, a poll tick
    takes the job over once its lease has run out).
    """
    now = deps.clock.now()
    take = Change(claims.take_for_plan, owner, now, LeaseTerms(deps.settings.lease_seconds))
    job = contended(deps.store.update_job, job_id, take)
    if job is None:
        log.info("planned or being planned elsewhere", extra=fields(job_id=job_id))
        return None
    log.info("planning", extra=fields(job_id=job_id, source=job.source.uri))
    keeper = Keeper(deps, f"planning {job_id}", [_planning_renewal(deps, job_id, owner)])
    try:
        with keeper:
            plan = build_plan(deps, job, heartbeat=keeper.check)
    except UnreadableInput as exc:
        return reject(deps, job, str(exc))
    except LeaseLost:
        log.warning(
            "lost the planning lease; the new holder carries on", extra=fields(job_id=job_id)
        )
        return None
    over = over_budget(job, plan.estimate)
    if over is not None:
        return reject(deps, job, over, estimate=plan.estimate.to_dict())
    return _commit(deps, job, plan, owner)


def over_budget(job: Job, estimate: Estimate) -> str | None:
    """Why the job's worst-case estimate breaks its `max_cost_usd`, or None.

    A model without a price cannot be estimated: with a budget set, that rejects the job
    too (a guard that lets unknown costs through is no guard).
    """
    budget = job.options.max_cost_usd
    if budget is None:
        return None
    total = estimate.total_usd
    if total is None:
        models = ", ".join(sorted(estimate.unpriced))
        return (
            f"max_cost_usd is {budget:g} but the cost cannot be estimated: no price for "
            f"{models} (add one with BATCHLINE_PRICES)"
        )
    if total > budget:
        return (
            f"estimated cost ${total:.4f} (worst case: every request writes its max_tokens) "
            f"exceeds max_cost_usd ${budget:g}; nothing was sent"
        )
    return None


class _NotTheLine(Exception):
    """Carries a failure that is not the line's (reading a registered schema while parsing
    it) past the per-line guard and the input's error translation; `build_plan` raises the
    original error again."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _planning_renewal(deps: Deps, job_id: str, owner: str) -> Callable[[], bool]:
    """The heartbeat's renewal of the planning lease: True while it is still mine."""

    def renew() -> bool:
        terms = LeaseTerms(deps.settings.lease_seconds)
        change = Change(claims.renew_plan, owner, deps.clock.now(), terms)
        return deps.store.update_job(job_id, change) is not None

    return renew


def _commit(deps: Deps, job: Job, plan: Plan, owner: str) -> Job | None:
    now = deps.clock.now()
    counts = {
        "lines": plan.lines,
        "blank_lines": plan.blank_lines,
        "invalid": plan.invalid,
        "requests": plan.requests,
    }
    commit = Change(claims.commit_plan, owner, now, counts=counts, chunk_count=len(plan.chunks))
    committed = deps.store.update_job(job.job_id, commit, new_chunks=plan.chunks)
    if committed is None:
        log.warning("lost the planning lease", extra=fields(job_id=job.job_id))
        return None
    log.info(
        "planned",
        extra=fields(job_id=job.job_id, chunks=len(plan.chunks), **counts),
    )
    if committed.state is JobState.COLLECTING:
        messages.request_collect(deps, committed)
    return committed


def build_plan(deps: Deps, job: Job, heartbeat: Callable[[], None] = lambda: None) -> Plan:
    settings = deps.settings
    source = job.source
    if source.size > settings.max_input_bytes:
        raise UnreadableInput(
            f"the file is {source.size} bytes; the limit is {settings.max_input_bytes} bytes"
        )
    if source.size == 0:
        raise UnreadableInput("the file is empty")
    paths = WorkPaths(settings.work_bucket, job.job_id)
    schemas = _schema_context(deps, job)
    used_schemas: dict[str, ResponseSchema] = {}
    plan = Plan(chunks=[], estimate=Estimate(deps.prices))
    planner = ChunkPlanner(
        deps.limits,
        deps.encoder,
        lambda request, line: plan.estimate.add(request.provider, request.model, line),
    )
    explicit_ids: dict[str, int] = {}
    generated: list[int] = []
    invalid: list[tuple[InvalidLine, str | None]] = []

    def stage(planned: PlannedChunk) -> None:
        heartbeat()
        plan.chunks.append(_stage_chunk(deps, job, paths, len(plan.chunks), planned))

    take = LineWork(
        planner,
        explicit_ids,
        schemas,
        default_model=job.options.model or settings.default_model,
        max_line_bytes=settings.max_line_bytes,
        enabled=settings.enabled_providers,
        job_id=job.job_id,
    ).take

    try:
        with ExitStack() as stack:
            raw = stack.enter_context(deps.blobs.open_read(source.uri, source.generation))
            stream: BinaryIO | gzip.GzipFile = raw
            if _is_gzip(source):
                stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            for number, line in iter_lines(stream, settings.max_line_bytes):
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
                    used_schemas.setdefault(outcome.schema.digest, outcome.schema)
                if full is not None:
                    stage(full)
            for planned in planner.finish():
                stage(planned)
    except _NotTheLine as outside:
        raise outside.error from outside.error.__cause__
    except NotFound as exc:
        raise UnreadableInput(f"the input object is gone: {exc}") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise UnreadableInput(f"the file cannot be decompressed: {exc}") from exc
    if plan.lines == 0:
        raise UnreadableInput("the file has no requests (only blank lines)")

    taken = set(explicit_ids)
    plan.id_collisions = {
        n: generated_custom_id(n, taken) for n in generated if f"line-{n}" in taken
    }
    plan.invalid = len(invalid)
    buffer = bytearray()
    for bad, custom_id in invalid:
        resolved = custom_id or plan.id_collisions.get(bad.line) or f"line-{bad.line}"
        record = invalid_result_line(bad, resolved)
        plan.invalid_tally.add(record)
        buffer += b"%d\t" % bad.line + orjson.dumps(record) + b"\n"
    for digest, schema in used_schemas.items():
        deps.blobs.write_bytes(
            paths.schema(digest), orjson.dumps(schema.to_dict()), "application/json"
        )
    deps.blobs.write_bytes(paths.invalid, bytes(buffer), "text/tab-separated-values")
    deps.blobs.write_bytes(paths.plan, orjson.dumps(plan.to_dict()), "application/json")
    return plan


def _schema_context(deps: Deps, job: Job) -> SchemaContext:
    """Registered schemas, read once each from the work bucket, and the job's default.

    A default that cannot be used rejects the job: every line relying on it would fail.
    """
    found: dict[str, ResponseSchema] = {}

    def lookup(name: str) -> ResponseSchema:
        if name not in found:
            uri = registered_schema_uri(deps.settings.work_bucket, name)
            try:
                raw = deps.blobs.read_bytes(uri)
            except NotFound:
                raise SchemaError(
                    "", f"no registered schema named {name!r} ({uri}): see `batchline schema push`"
                ) from None
            except Exception as exc:
                # Not the line's fault (GCS, permissions): through the per-line guard.
                raise _NotTheLine(exc) from exc
            try:
                found[name] = ResponseSchema.create(orjson.loads(raw), name)
            except orjson.JSONDecodeError as exc:
                raise SchemaError("", f"registered schema {name!r} is not JSON ({exc})") from None
            except SchemaError as exc:
                raise SchemaError("", f"registered schema {name!r}: {exc}") from None
        return found[name]

    try:
        name, inline = default_schema_of(job.options)
        default = lookup(name) if name is not None else inline
    except SchemaError as exc:
        raise UnreadableInput(f"the job's default schema cannot be used: {exc}") from None
    except _NotTheLine as outside:
        raise outside.error from outside.error.__cause__
    return SchemaContext(lookup=lookup, default=default)


class LineWork:
    """One line's work: parse it, check its id, add it to its chunk.

    `take` each line: it returns the planned request and the chunk it displaced, or
    the line's `InvalidLine`. No exception from the line's own work stops planning:
    whatever parsing, encoding or estimating it raises makes this line `invalid` and the
    next line is read. Failures that are not the line's (reading a registered schema)
    propagate. (A class, not a function taking the job's settings, because it runs for
    every line: binding them once keeps the call cheap.)
    """

    __slots__ = (
        "_default_model",
        "_enabled",
        "_explicit_ids",
        "_job_id",
        "_max_line_bytes",
        "_planner",
        "_schemas",
    )

    def __init__(
        self,
        planner: ChunkPlanner,
        explicit_ids: dict[str, int],
        schemas: SchemaContext,
        *,
        default_model: str | None,
        max_line_bytes: int,
        enabled: frozenset[str],
        job_id: str,
    ) -> None:
        self._planner = planner
        self._explicit_ids = explicit_ids
        self._schemas = schemas
        self._default_model = default_model
        self._max_line_bytes = max_line_bytes
        self._enabled = enabled
        self._job_id = job_id

    def take(
        self, number: int, line: bytes | LineTooLong
    ) -> tuple[Request | InvalidLine, PlannedChunk | None]:
        request: Request | None = None
        try:
            parsed = parse_line(
                number,
                line,
                default_model=self._default_model,
                max_line_bytes=self._max_line_bytes,
                schemas=self._schemas,
                enabled=self._enabled,
            )
            if not isinstance(parsed, Request):  # (isinstance is cheapest when it holds)
                return parsed, None
            request = parsed
            if request.custom_id is not None:
                first = self._explicit_ids.get(request.custom_id)
                if first is not None:
                    duplicate = f"duplicate of line {first}"
                    return InvalidLine(number, request.custom_id, "custom_id", duplicate), None
            return request, self._planner.add(request, line)
        except _NotTheLine:
            raise
        except RequestRefused as exc:
            assert request is not None
            return InvalidLine(number, request.custom_id, exc.field, exc.reason), None
        except Exception as exc:
            log.warning(
                "a line could not be planned; it is invalid",
                extra=fields(
                    job_id=self._job_id, line=number, error=type(exc).__name__, at=_where(exc)
                ),
            )
            custom_id = request.custom_id if request is not None else _recovered_id(line)
            reason = f"could not be encoded: {describe_error(exc)}"
            return InvalidLine(number, custom_id, "line", reason), None


def _where(exc: BaseException) -> str:
    """Where `exc` was raised, for a log (its message may quote the line: not logged)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    code = tb.tb_frame.f_code
    return f"{code.co_filename}:{tb.tb_lineno} in {code.co_name}"


def _recovered_id(line: bytes | LineTooLong) -> str | None:
    if isinstance(line, LineTooLong):
        return line.custom_id
    scanner = TopLevelIdScanner()
    scanner.feed(line)
    return scanner.custom_id


def _stage_chunk(
    deps: Deps, job: Job, paths: WorkPaths, index: int, planned: PlannedChunk
) -> Chunk:
    payload_uri = paths.payload(index)
    manifest_uri = paths.manifest(index)
    # False means a planner before us wrote the same bytes: nothing to do.
    deps.blobs.write_bytes(payload_uri, planned.payload.getvalue(), "application/jsonl")
    deps.blobs.write_bytes(manifest_uri, planned.manifest.getvalue(), "application/jsonl")
    return Chunk(
        job_id=job.job_id,
        index=index,
        provider=planned.provider,
        model=planned.model,
        request_count=planned.request_count,
        payload_bytes=planned.payload_bytes,
        payload_uri=payload_uri,
        manifest_uri=manifest_uri,
        updated_at=deps.clock.now(),
    )


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _is_gzip(source: Any) -> bool:
    return bool(source.name.endswith(".gz") or source.content_encoding == "gzip")
