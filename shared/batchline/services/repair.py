"""Re-asking answers that failed their schema, in follow-up batches to the same provider.

While a chunk is collected, each answer with a schema is validated (`SchemaChecks`). An
invalid one is written as `failed` (`schema_validation`) like any other line, and, while
the job allows more attempts, noted (`Asks`). `stage` then reads the chunk's staged
payload once and writes the noted requests again, each with its previous answer and what
was wrong with it appended to the conversation, beside the chunk's runs; the chunk's
`collected.json` commits them with the rest. When every chunk is collected and some have
re-asks that no chunk answers yet, `start_round` cuts them into new chunks under the
provider's limits and moves the job back to running, in one transaction; poll submits
them like any chunk, and the next collect replaces the re-asked lines with the new answer
(the result line lists every attempt). Every name is deterministic and every write
create-if-absent, so racing or repeated collects stage the same round once.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change
from batchline.domain.models import Chunk, Job, ProviderResult
from batchline.domain.paths import WorkPaths
from batchline.domain.providers import registry
from batchline.domain.results import superseded
from batchline.domain.schemas import (
    ResponseSchema,
    SchemaCheck,
    Validator,
    Violation,
    repair_feedback,
)
from batchline.log import fields, get_logger

log = get_logger(__name__)


class Entry(NamedTuple):
    """A chunk manifest's line: its custom_id, schema digest and, for a re-ask, the
    attempts before and the line they made (which a tally takes back)."""

    custom_id: str
    schema: str | None
    earlier: list[dict[str, Any]] | None
    previous: dict[str, Any] | None


class SchemaChecks:
    """Compiled validators of one job's schemas, loaded from the work bucket on first use."""

    def __init__(self, deps: Deps, paths: WorkPaths, max_repairs: int) -> None:
        self._deps = deps
        self._paths = paths
        self.max_repairs = max_repairs
        self._validators: dict[tuple[str, str], Validator] = {}

    def check(self, digest: str, provider: str, result: ProviderResult) -> SchemaCheck:
        validator = self._validators.get((digest, provider))
        if validator is None:
            validator = self._load(digest, provider)
        return validator.check(result.text, result.structured)

    def _load(self, digest: str, provider: str) -> Validator:
        raw = orjson.loads(self._deps.blobs.read_bytes(self._paths.schema(digest)))
        schema = ResponseSchema.from_dict(raw)
        # OpenAI strict mode answers `null` for optional properties: drop those again.
        strict = registry.provider(provider).strips_nulls(schema)
        validator = self._validators[digest, provider] = Validator(schema, strip_nulls=strict)
        return validator


@dataclass
class Asks:
    """The lines of one chunk to ask again: line -> (manifest entry, answer, feedback)."""

    lines: dict[int, tuple[dict[str, Any], str, str]] = field(default_factory=dict)

    def add(
        self,
        line: int,
        entry: Entry,
        record: dict[str, Any],
        realtime_usd: float | None,
        violation: Violation,
    ) -> None:
        answer = record["output"]["text"] if record.get("output") else None
        next_entry = {
            "line": line,
            "custom_id": entry.custom_id,
            "schema": entry.schema,
            "attempts": record["attempts"],
            "previous": superseded(record, realtime_usd),
        }
        self.lines[line] = (next_entry, answer or "", repair_feedback(violation))

    def __len__(self) -> int:
        return len(self.lines)


@dataclass(frozen=True)
class Repairs:
    """A chunk's staged re-asks: request lines and their manifest, in the same order."""

    payload: str
    manifest: str
    requests: int

    def to_dict(self) -> dict[str, Any]:
        return {"payload": self.payload, "manifest": self.manifest, "requests": self.requests}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Repairs:
        return cls(data["payload"], data["manifest"], int(data["requests"]))


def stage(
    deps: Deps, paths: WorkPaths, chunk: Chunk, order: list[int], attempt: str, asks: Asks
) -> Repairs:
    """Write the chunk's re-asks: its staged request lines, each with a repair turn.

    `order` is the line of each staged request, in payload order (the chunk's manifest).
    """
    add_turn = deps.repair_turn(chunk.provider)
    payload = io.BytesIO()
    manifest = io.BytesIO()
    with deps.blobs.open_read(chunk.payload_uri) as staged:
        for line, raw in zip(order, staged, strict=False):
            ask = asks.lines.get(line)
            if ask is None:
                continue
            entry, answer, feedback = ask
            request = orjson.loads(raw)
            add_turn(request, answer, feedback)
            payload.write(orjson.dumps(request, option=orjson.OPT_APPEND_NEWLINE))
            manifest.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
    repairs = Repairs(
        paths.repairs(chunk.index, attempt),
        paths.repairs_manifest(chunk.index, attempt),
        len(asks),
    )
    deps.blobs.write_bytes(repairs.payload, payload.getvalue(), "application/jsonl")
    deps.blobs.write_bytes(repairs.manifest, manifest.getvalue(), "application/jsonl")
    return repairs


def start_round(
    deps: Deps,
    job: Job,
    paths: WorkPaths,
    chunks: list[Chunk],
    pending: list[tuple[Chunk, Repairs]],
) -> Job | None:
    """Stage the pending re-asks as new chunks and move the job back to running."""
    new: list[Chunk] = []
    for source, repairs in pending:
        limits = deps.limits(source.provider)
        room = limits.max_bytes - limits.envelope_bytes
        lines = deps.blobs.read_bytes(repairs.payload).splitlines(keepends=True)
        entries = deps.blobs.read_bytes(repairs.manifest).splitlines(keepends=True)
        start = 0
        while start < len(lines):
            end, size = start, 0
            while end < len(lines) and end - start < limits.max_requests:
                if size + len(lines[end]) > room and end > start:
                    break
                size += len(lines[end])
                end += 1
            index = len(chunks) + len(new)
            payload_uri, manifest_uri = paths.payload(index), paths.manifest(index)
            deps.blobs.write_bytes(payload_uri, b"".join(lines[start:end]), "application/jsonl")
            deps.blobs.write_bytes(manifest_uri, b"".join(entries[start:end]), "application/jsonl")
            new.append(
                Chunk(
                    job_id=job.job_id,
                    index=index,
                    provider=source.provider,
                    model=source.model,
                    request_count=end - start,
                    payload_bytes=size,
                    payload_uri=payload_uri,
                    manifest_uri=manifest_uri,
                    updated_at=deps.clock.now(),
                    repair_round=source.repair_round + 1,
                    repair_of=source.index,
                )
            )
            start = end
    now = deps.clock.now()
    reopen = Change(claims.reopen_for_repair, now, chunk_count=len(chunks), new_chunks=len(new))
    reopened = deps.store.update_job(job.job_id, reopen, new_chunks=new)
    if reopened is None:
        return deps.store.get_job(job.job_id)
    log.info(
        "re-asking answers that failed their schema",
        extra=fields(
            job_id=job.job_id,
            requests=sum(r.requests for _, r in pending),
            chunks=len(new),
        ),
    )
    return reopened
