"""A dry run of planning: what a job would be, without staging, uploading or calling a
provider. Lines are read, parsed, encoded and cut into chunks by the same code that plans
a job (`services.line_work.LineWork`, `domain.planning.ChunkPlanner`, `domain.estimate`), with
the chunks keeping only their sizes, so memory stays small.

Registered schemas live in the work bucket, which a dry run does not read (the api
function may not): a line naming one is planned without it, and `warnings` says so.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from batchline.bootstrap import Deps
from batchline.domain.estimate import Estimate
from batchline.domain.lines import LineTooLong, UnreadableInput, iter_lines
from batchline.domain.models import JobOptions, Source
from batchline.domain.planning import ChunkPlanner, PlannedChunk
from batchline.domain.pricing import price_for
from batchline.domain.requests import InvalidLine, Request, SchemaContext
from batchline.domain.schemas import ResponseSchema
from batchline.errors import NotFound
from batchline.services.line_work import LineWork, selector_for

#: Invalid lines a dry run lists (it counts them all).
LISTED_INVALID = 20
#: Stands for a registered schema a dry run cannot read.
_UNREAD_SCHEMA = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}


@dataclass
class DryRun:
    """What planning a job's input found."""

    lines: int = 0
    blank_lines: int = 0
    requests: int = 0
    invalid: int = 0
    invalid_lines: list[InvalidLine] = field(default_factory=list)
    #: (provider, model) -> [chunks, requests, bytes]
    chunks: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    estimate: Estimate = field(default_factory=Estimate)
    unread_schemas: set[str] = field(default_factory=set)
    #: The `model: "auto"` choices per model, with why (`Selector.choices`).
    auto: list[dict[str, Any]] = field(default_factory=list)

    def add_chunk(self, planned: PlannedChunk) -> None:
        """Count a chunk the planner handed out."""
        entry = self.chunks.setdefault((planned.provider, planned.model), [0, 0, 0])
        entry[0] += 1
        entry[1] += planned.request_count
        entry[2] += planned.payload_bytes

    def input_only_usd(self, deps: Deps) -> float | None:
        """The cheapest the requests can be: their input tokens at batch prices, no output."""
        total = 0.0
        for key, entry in self.estimate.by_model().items():
            provider, _, model = key.partition("/")
            price = price_for(deps.prices, provider, model)
            if price is None:
                return None
            total += entry.input_tokens * price.input / 1e6
        return round(total, 10)

    def view(self, deps: Deps) -> dict[str, Any]:
        """What the dry run found, as `POST /v1/jobs:estimate` and `batchline estimate
        --json` show it (the API's `EstimateView`)."""
        totals = self.estimate.to_dict()
        return {
            "lines": self.lines,
            "blank_lines": self.blank_lines,
            "requests": self.requests,
            "invalid": self.invalid,
            "invalid_lines": [
                {"line": i.line, "custom_id": i.custom_id, "field": i.field, "message": i.reason}
                for i in self.invalid_lines
            ],
            "chunks": [
                {"provider": p, "model": m, "chunks": n, "requests": r, "bytes": b}
                for (p, m), (n, r, b) in sorted(self.chunks.items())
            ],
            "auto": self.auto,
            "cost_usd": {
                "low": self.input_only_usd(deps),
                "high": totals["batch_usd"],
                "realtime_high": totals["realtime_usd"],
            },
            "estimate": totals,
            "warnings": self.warnings(),
        }

    def warnings(self) -> list[str]:
        """What the dry run could not check, for the caller."""
        return [
            f"registered schema {name!r} is not read by a dry run: its lines are planned "
            "without it (its tokens are not counted, nor checked against the providers)"
            for name in sorted(self.unread_schemas)
        ]


def inline_source(requests: list[Any]) -> io.BytesIO:
    """Inline requests as the JSONL file a job stages from them."""
    return io.BytesIO(b"".join(orjson.dumps(r) + b"\n" for r in requests))


def dry_run_object(deps: Deps, source: Source, options: JobOptions) -> DryRun:
    """Plan the input object `source` (in the input bucket) without side effects."""
    if source.size > deps.settings.max_input_bytes:
        raise UnreadableInput(
            f"the file is {source.size} bytes; the limit is {deps.settings.max_input_bytes} bytes"
        )
    try:
        with ExitStack() as stack:
            raw = stack.enter_context(deps.blobs.open_read(source.uri, source.generation))
            stream: BinaryIO | gzip.GzipFile = raw
            if source.name.endswith(".gz") or source.content_encoding == "gzip":
                stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            return dry_run(deps, stream, options)
    except NotFound as exc:
        raise UnreadableInput(f"the input object is gone: {exc}") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise UnreadableInput(f"the file cannot be decompressed: {exc}") from exc


def dry_run(deps: Deps, stream: BinaryIO | gzip.GzipFile, options: JobOptions) -> DryRun:
    """Read, parse and plan every line of `stream` as planning a job with `options` would."""
    found = DryRun(estimate=Estimate(deps.prices))
    planner = ChunkPlanner(
        deps.limits,
        deps.encoder,
        lambda request, line: found.estimate.add(request.provider, request.model, line),
        sizes_only=True,
        narrow=deps.settings.quotas.narrow,
    )
    explicit_ids: dict[str, int] = {}
    selector = selector_for(deps, options)
    take = LineWork(
        planner,
        explicit_ids,
        _schemas(options, found.unread_schemas),
        default_model=options.model or deps.settings.default_model,
        max_line_bytes=deps.settings.max_line_bytes,
        enabled=deps.settings.enabled_providers,
        job_id="dry-run",
        selector=selector,
    ).take
    for number, line in _lines(stream, deps.settings.max_line_bytes, found):
        outcome, full = take(number, line)
        if outcome.custom_id is not None:
            explicit_ids.setdefault(outcome.custom_id, number)
        if not isinstance(outcome, Request):
            found.invalid += 1
            if len(found.invalid_lines) < LISTED_INVALID:
                found.invalid_lines.append(outcome)
            continue
        found.requests += 1
        if full is not None:
            found.add_chunk(full)
    for planned in planner.finish():
        found.add_chunk(planned)
    found.auto = selector.choices()
    if found.lines == 0:
        raise UnreadableInput("the file has no requests (only blank lines)")
    return found


def _lines(
    stream: BinaryIO | gzip.GzipFile, max_line_bytes: int, found: DryRun
) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """The non-blank lines, counting lines and blank ones as planning does."""
    for number, line in iter_lines(stream, max_line_bytes):
        if isinstance(line, bytes) and not line.strip():
            found.blank_lines += 1
            continue
        found.lines += 1
        if found.lines == 1 and isinstance(line, bytes):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                raise UnreadableInput(f"the file is not UTF-8 text (line {number})") from None
        yield number, line


def _schemas(options: JobOptions, unread: set[str]) -> SchemaContext:
    def lookup(name: str) -> ResponseSchema:
        unread.add(name)
        return ResponseSchema.create(dict(_UNREAD_SCHEMA), name)

    if options.response_schema is not None:
        default: ResponseSchema | None = ResponseSchema.from_line_value(options.response_schema)
    elif options.schema is not None:
        default = lookup(options.schema)
    else:
        default = None
    return SchemaContext(lookup=lookup, default=default)
