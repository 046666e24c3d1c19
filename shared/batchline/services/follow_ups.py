"""The lines of one chunk that a follow-up round sends again, noted and staged.

While a chunk is collected, each result line that can be helped is noted (`FollowUps`):
an answer that failed its schema is repaired (same model, with what was wrong), a line
that failed for a passing reason is retried (same model, same request), and a line that
still fails, or whose batch failed as a whole, fails over to the next model of its chain
(`domain/rounds.py` decides). A failover's result line is held back until staging knows
whether some model can take the line: when none can (a provider-native line, content or a
schema keyword the fallbacks refuse), its error says why, per model.

`stage` then reads the chunk's payload and stored requests once and writes each group
(one reason and model) beside the chunk's runs: its request lines encoded for the target,
its manifest rows (each with the attempts so far) and its stored requests, with the
group's worst-case cost. The chunk's `collected.json` commits them with its runs.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchline.bootstrap import Deps
from batchline.domain.estimate import estimate_line
from batchline.domain.models import Chunk
from batchline.domain.paths import WorkPaths
from batchline.domain.pricing import cost, price_for
from batchline.domain.providers.base import InvalidField
from batchline.domain.requests import retarget
from batchline.domain.results import SKIPPED
from batchline.domain.rounds import NextStep, RoundReason, not_moved_note
from batchline.domain.schemas import ResponseSchema
from batchline.domain.workfiles.collected import FollowUp
from batchline.domain.workfiles.manifest import ManifestEntry, write_manifest
from batchline.domain.workfiles.payload import open_payload, write_payload
from batchline.domain.workfiles.requests import (
    NativeRequest,
    checked_row,
    decode_stored,
    encode_request,
    open_rows,
    write_stored,
)

_APPEND_NEWLINE = orjson.OPT_APPEND_NEWLINE


@dataclass
class FollowUps:
    """The lines of one chunk to send again: line -> (next manifest entry, what to do).

    `repairs` hold (answer, feedback), `retries` nothing more, `failovers` the step (its
    chain) and the result line as written, held until staging (`held`)."""

    repairs: dict[int, tuple[ManifestEntry, str, str]] = field(default_factory=dict)
    retries: dict[int, ManifestEntry] = field(default_factory=dict)
    failovers: dict[int, tuple[ManifestEntry, NextStep, dict[str, Any]]] = field(
        default_factory=dict
    )

    def __len__(self) -> int:
        return len(self.repairs) + len(self.retries) + len(self.failovers)


class _Group:
    """One reason and target model's staged lines, filling."""

    def __init__(self, reason: RoundReason, provider: str, model: str) -> None:
        self.reason, self.provider, self.model = reason, provider, model
        self.payload, self.manifest, self.stored = io.BytesIO(), io.BytesIO(), io.BytesIO()
        self.requests = 0
        self.worst_usd: float | None = 0.0

    def add(self, encoded: bytes, entry: ManifestEntry, stored: bytes, worst: float | None) -> None:
        self.payload.write(encoded)
        self.manifest.write(entry.encode())
        self.stored.write(stored)
        self.requests += 1
        self.worst_usd = None if worst is None or self.worst_usd is None else self.worst_usd + worst


class Stager:
    """Stages one chunk's follow-ups (see the module); `written` gets every held result
    line once its fate is known (with a note when it could fail over nowhere)."""

    def __init__(
        self,
        deps: Deps,
        chunk: Chunk,
        schema: Callable[[str], ResponseSchema],
        written: Callable[[int, dict[str, Any]], None],
    ) -> None:
        self._deps, self._chunk, self._schema, self._written = deps, chunk, schema, written
        self._groups: dict[tuple[str, str, str], _Group] = {}
        self._placed: set[int] = set()  # the held lines whose fate is known

    def stage(
        self, paths: WorkPaths, order: list[int], attempt: str, noted: FollowUps
    ) -> list[FollowUp]:
        """Read the chunk's payload and stored requests once (`order`: the line of each,
        the manifest's order) and write each group's files; their records, in order."""
        chunk = self._chunk
        with ExitStack() as stack:
            staged = stack.enter_context(open_payload(self._deps.blobs, chunk.payload_uri))
            rows = stack.enter_context(open_rows(self._deps.blobs, chunk.requests_uri))
            wanted = noted.repairs.keys() | noted.retries.keys() | noted.failovers.keys()
            for number, (line, raw) in enumerate(zip(order, staged, strict=False), 1):
                row = next(rows, b"")
                if line not in wanted:
                    continue  # (most lines: a row is only parsed when it is sent again)
                if chunk.requests_uri is not None and row:
                    row = checked_row(row, chunk.requests_uri, number, line)
                self._one(line, raw, row, number, noted)
        for line, (_, _, record) in noted.failovers.items():
            if line not in self._placed:
                self._written(line, record)  # its payload row was missing: it stands
        return [self._write(paths, attempt, k, g) for k, g in enumerate(self._groups.values())]

    def _one(self, line: int, raw: bytes, row: bytes, number: int, noted: FollowUps) -> None:
        chunk = self._chunk
        if line in noted.repairs:
            entry, answer, feedback = noted.repairs[line]
            request = orjson.loads(raw)
            self._deps.repair_turn(chunk.provider)(request, answer, feedback)
            encoded = orjson.dumps(request, option=_APPEND_NEWLINE)
            self._add(RoundReason.REPAIR, chunk.provider, chunk.model, encoded, entry, row)
        elif line in noted.retries:
            encoded = raw if raw.endswith(b"\n") else raw + b"\n"
            self._add(
                RoundReason.RETRY, chunk.provider, chunk.model, encoded, noted.retries[line], row
            )
        elif line in noted.failovers:
            self._placed.add(line)
            entry, step, record = noted.failovers[line]
            self._fail_over(line, row, number, entry, step, record)

    def _fail_over(
        self,
        line: int,
        row: bytes,
        number: int,
        entry: ManifestEntry,
        step: NextStep,
        record: dict[str, Any],
    ) -> None:
        """Stage the line for the first model of its chain that can take it, or write its
        result line saying why none could."""
        uri = self._chunk.requests_uri or ""
        stored = decode_stored(row, uri, number) if row else None
        if stored is None or isinstance(stored, NativeRequest):
            self._written(line, _noted(record, [NativeRequest.CANNOT_MOVE]))
            return
        request = stored.to_request(self._schema)
        refused: list[str] = []
        skipped: list[dict[str, Any]] = []
        for target in step.chain:
            try:
                moved = retarget(request, target, self._deps.settings.enabled_providers)
                encoded = orjson.dumps(
                    self._deps.encoder(moved.provider)(moved), option=_APPEND_NEWLINE
                )
            except InvalidField as exc:
                refused.append(f"{target}: {exc.field}: {exc.reason}")
                skipped.append(skipped_attempt(target, f"{exc.field}: {exc.reason}"))
                continue
            if skipped:  # the line's attempts say which models it passed over, and why
                entry = entry._replace(earlier=[*(entry.earlier or ()), *skipped])
            self._add(
                RoundReason.FAILOVER,
                moved.provider,
                moved.model,
                encoded,
                entry,
                encode_request(moved),
            )
            self._written(line, record)
            return
        self._written(line, _noted(record, refused))

    def _add(
        self,
        reason: RoundReason,
        provider: str,
        model: str,
        encoded: bytes,
        entry: ManifestEntry,
        stored: bytes,
    ) -> None:
        key = (str(reason), provider, model)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(reason, provider, model)
        group.add(encoded, entry, stored, self._worst_usd(provider, model, encoded))

    def _worst_usd(self, provider: str, model: str, encoded: bytes) -> float | None:
        """The most the line may cost at `provider/model` (None: the model has no price)."""
        prices = self._deps.prices
        price = price_for(prices, provider, model)
        if price is None:
            return None
        line = estimate_line(provider, model, encoded, prices)
        usage = {"input_tokens": line.input_tokens, "output_tokens": line.max_output_tokens}
        return cost(price, usage).batch_usd

    def _write(self, paths: WorkPaths, attempt: str, k: int, group: _Group) -> FollowUp:
        blobs = self._deps.blobs
        index = self._chunk.index
        keeps_requests = self._chunk.requests_uri is not None
        follow_up = FollowUp(
            paths.follow_ups(index, attempt, k),
            paths.follow_ups_manifest(index, attempt, k),
            group.requests,
            paths.follow_ups_requests(index, attempt, k) if keeps_requests else None,
            reason=str(group.reason),
            provider=group.provider,
            model=group.model,
            worst_usd=group.worst_usd,
        )
        write_payload(blobs, follow_up.payload, group.payload.getvalue())
        write_manifest(blobs, follow_up.manifest, group.manifest.getvalue())
        if follow_up.stored is not None:
            write_stored(blobs, follow_up.stored, group.stored.getvalue())
        return follow_up


def skipped_attempt(target: str, why: str) -> dict[str, Any]:
    """An attempt that was never sent: model `target` cannot take the line (`why`)."""
    provider, _, model = target.partition("/")
    return {
        "reason": str(RoundReason.FAILOVER),
        "provider": provider,
        "model": model,
        "batch_id": None,
        "status": SKIPPED,
        "usage": None,
        "cost_usd": None,
        "error": {"type": "unsupported", "message": why, "retryable": False},
    }


def _noted(record: dict[str, Any], reasons: list[str]) -> dict[str, Any]:
    """`record` with its error saying why it went to no other model."""
    error = dict(record.get("error") or {})
    note = not_moved_note(reasons)
    error["message"] = f"{error['message']} ({note})" if error.get("message") else note
    return {**record, "error": error}
