"""Cutting valid requests into chunks under each provider's limits.

Requests are grouped by (provider, model); each group fills one buffer at a time, and a
buffer is handed out as a `PlannedChunk` as soon as the next request would not fit. Peak
memory is one chunk's payload per open group, never the file.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchline.config import ChunkLimits
from batchline.domain.requests import Request

#: A request as one line of its provider's batch input, as an object (dumped here).
Encoder = Callable[[Request], dict[str, Any]]
#: Sees each request with its encoded line (the pre-submit estimate counts them).
Observer = Callable[[Request, dict[str, Any]], None]


@dataclass
class PlannedChunk:
    provider: str
    model: str
    payload: io.BytesIO = field(default_factory=io.BytesIO)
    manifest: io.BytesIO = field(default_factory=io.BytesIO)
    request_count: int = 0
    first_line: int = 0

    @property
    def payload_bytes(self) -> int:
        return self.payload.tell()


class RequestTooLarge(ValueError):
    """One request's encoding alone exceeds the provider's per-batch byte limit."""


class ChunkPlanner:
    def __init__(
        self,
        limits: Callable[[str], ChunkLimits],
        encoders: Callable[[str], Encoder],
        observe: Observer | None = None,
    ) -> None:
        self._limits = limits
        self._encoders = encoders
        self._observe = observe
        self._open: dict[tuple[str, str], PlannedChunk] = {}
        self._per_provider: dict[str, tuple[ChunkLimits, Encoder]] = {}

    def add(self, request: Request) -> PlannedChunk | None:
        """Buffer `request`; return the chunk it displaced when that chunk was full."""
        key = (request.provider, request.model)
        known = self._per_provider.get(request.provider)
        if known is None:
            known = (self._limits(request.provider), self._encoders(request.provider))
            self._per_provider[request.provider] = known
        limits, encode = known
        line = encode(request)
        if self._observe is not None:
            self._observe(request, line)
        encoded = orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
        room = limits.max_bytes - limits.envelope_bytes
        if len(encoded) > room:
            raise RequestTooLarge(
                f"{len(encoded)} bytes once encoded; one {request.provider} batch takes at most "
                f"{room}"
            )
        full: PlannedChunk | None = None
        current = self._open.get(key)
        if current is not None and (
            current.request_count + 1 > limits.max_requests
            or current.payload_bytes + len(encoded) > room
        ):
            full = current
            current = None
        if current is None:
            current = PlannedChunk(request.provider, request.model, first_line=request.line)
            self._open[key] = current
        current.payload.write(encoded)
        entry: dict[str, object] = {"line": request.line, "custom_id": request.custom_id}
        if request.schema is not None:
            entry["schema"] = request.schema.digest
        current.manifest.write(orjson.dumps(entry) + b"\n")
        current.request_count += 1
        return full

    def finish(self) -> list[PlannedChunk]:
        """The partly filled chunks, in order of their first line (deterministic)."""
        rest = sorted(self._open.values(), key=lambda c: c.first_line)
        self._open.clear()
        return rest
