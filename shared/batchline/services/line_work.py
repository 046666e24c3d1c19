"""One input line's work during planning: parse it, check its id, add it to its chunk.

No exception from a line's own work stops planning: whatever parsing, encoding or
estimating raises makes that line `invalid` and the next line is read. Failures that are
not the line's (reading a registered schema, writing the work bucket) stop planning: they
travel past the per-line guard wrapped (`NotTheLine`, `SinkFailed`), and the planner
raises the original error again.
"""

from __future__ import annotations

import orjson

from batchline.bootstrap import Deps
from batchline.domain.jsonscan import TopLevelIdScanner
from batchline.domain.lines import LineTooLong, UnreadableInput
from batchline.domain.models import PREFERENCES, Job, JobOptions
from batchline.domain.options import default_schema_of
from batchline.domain.paths import registered_schema_uri
from batchline.domain.planning import (
    ChunkPlanner,
    PlannedChunk,
    RequestRefused,
    SinkFailed,
    describe_error,
)
from batchline.domain.providers.base import InvalidField
from batchline.domain.requests import AUTO, InvalidLine, Request, SchemaContext, parse_line
from batchline.domain.schemas import ResponseSchema, SchemaError
from batchline.domain.selection import Selector, default_candidates
from batchline.errors import NotFound
from batchline.log import fields, get_logger

log = get_logger(__name__)


class NotTheLine(Exception):
    """Carries a failure that is not the line's (reading a registered schema while parsing
    it) past the per-line guard and the input's error translation; `build_plan` raises the
    original error again."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def schema_context(deps: Deps, job: Job) -> SchemaContext:
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
                raise NotTheLine(exc) from exc
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
    except NotTheLine as outside:
        raise outside.error from outside.error.__cause__
    return SchemaContext(lookup=lookup, default=default)


def selector_for(deps: Deps, options: JobOptions) -> Selector:
    """How the job's `model: "auto"` lines choose: its `candidates` (else the deployment's
    BATCHLINE_AUTO_CANDIDATES, else one per enabled provider) and `prefer`."""
    settings = deps.settings
    candidates = (
        options.candidates
        or settings.auto_candidates
        or default_candidates(deps.prices, settings.enabled_providers)
    )
    return Selector(
        candidates,
        prefer=options.prefer or PREFERENCES[0],
        prices=deps.prices,
        encoders=deps.encoder,
        limits=deps.limits,
        enabled=settings.enabled_providers,
        narrow=settings.quotas.narrow,
    )


class LineWork:
    """One line's work: parse it, check its id, add it to its chunk.

    `take` each line: it returns the planned request and the chunk it displaced, or
    the line's `InvalidLine`. A line whose model is "auto" is bound to the model
    `selector` chooses first. No exception from the line's own work stops planning:
    whatever parsing, encoding or estimating it raises makes this line `invalid` and the
    next line is read. Failures that are not the line's (reading a registered schema,
    writing stored requests) propagate. (A class, not a function taking the job's settings, because it runs for
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
        "_selector",
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
        selector: Selector,
    ) -> None:
        self._planner = planner
        self._explicit_ids = explicit_ids
        self._schemas = schemas
        self._default_model = default_model
        self._max_line_bytes = max_line_bytes
        self._enabled = enabled
        self._job_id = job_id
        self._selector = selector

    def take(
        self, number: int, line: bytes | LineTooLong
    ) -> tuple[Request | InvalidLine, PlannedChunk | None]:
        """Line `number`'s request and the chunk it displaced, or its `InvalidLine`."""
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
            if request.provider == AUTO:
                request = self._selector.select(request)
            if request.custom_id is not None:
                first = self._explicit_ids.get(request.custom_id)
                if first is not None:
                    duplicate = f"duplicate of line {first}"
                    return InvalidLine(number, request.custom_id, "custom_id", duplicate), None
            return request, self._planner.add(request, line)
        except (NotTheLine, SinkFailed):
            raise
        except (RequestRefused, InvalidField) as exc:
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
