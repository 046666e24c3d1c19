"""Cutting requests into chunks under each provider's limits: the one place chunks are cut,
for the first round and for every round after it.

Requests are grouped by (provider, model); each group fills one buffer at a time, and a
buffer is handed out as a `PlannedChunk` as soon as the next request would not fit. Peak
memory is one chunk's payload per open group, never the file: a chunk's stored requests
(`workfiles.requests`, what a later round encodes again) stream out to a sink as it fills.

A request that cannot be sent as written is refused, never changed: one too large for a
batch (`RequestTooLarge`), one whose encoding fails (nested deeper than orjson writes, an
encoder's error) or would send a number other than the one in the line (orjson reads an
integer beyond 64 bits as a float) (`UnencodableRequest`). A refused request leaves the
planner as it was.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from batchline.domain.jsonscan import integer_out_of_range
from batchline.domain.providers.base import ChunkLimits
from batchline.domain.quotas import QUOTAS_ENV
from batchline.domain.requests import Request
from batchline.domain.workfiles.manifest import encode_entry
from batchline.domain.workfiles.requests import encode_request

#: A request as one line of its provider's batch input, as an object (dumped here).
Encoder = Callable[[Request], dict[str, Any]]
#: Sees each request with its encoded line (the pre-submit estimate counts them); returns
#: the request's input tokens (None: not counted), which a chunk's `input_tokens` sums.
Observer = Callable[[Request, dict[str, Any]], int | None]
#: Cuts a provider's limits for one model (provider, model, limits) -> limits: its quota's
#: share (`domain.quotas.Quotas.narrow`), so that any one chunk fits in the quota.
Narrow = Callable[[str, str, ChunkLimits], ChunkLimits]
#: Counts one encoded request line's input tokens (provider, model, line) -> tokens.
Count = Callable[[str, str, bytes], int]


class Sink(Protocol):
    """Where a chunk's stored requests go as the chunk fills."""

    def write(self, data: bytes, /) -> object:
        """Append `data`."""
        ...


#: Opens the sink of a new chunk's stored requests: (provider, model, first line) -> sink.
OpenSink = Callable[[str, str, int], Sink]


def _memory_sink(provider: str, model: str, first_line: int) -> Sink:
    return io.BytesIO()


def _discarding_sink(provider: str, model: str, first_line: int) -> Sink:
    return _ByteCount()


@dataclass
class PlannedChunk:
    """A cut chunk: its requests as the provider's batch input (`payload`), its manifest
    rows and its stored requests (`requests`, streamed to its sink), all in one order."""

    provider: str
    model: str
    first_line: int
    requests: Sink
    payload: io.BytesIO = field(default_factory=io.BytesIO)
    manifest: io.BytesIO = field(default_factory=io.BytesIO)
    request_count: int = 0
    #: The estimated input tokens of its requests (None: they were not counted).
    input_tokens: int | None = None

    @property
    def payload_bytes(self) -> int:
        """The payload's size so far."""
        return self.payload.tell()


class _ByteCount(io.BytesIO):
    """Stands for a chunk's buffer when only its size matters (a dry run): counts what is
    written and keeps none of it."""

    def __init__(self) -> None:
        super().__init__()
        self._size = 0

    def write(self, data: Any, /) -> int:
        self._size += len(data)
        return len(data)

    def tell(self) -> int:
        return self._size


class RequestRefused(ValueError):
    """A request the planner will not send; `field` and `reason` make its invalid line."""

    def __init__(self, reason: str, field: str = "line") -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


class RequestTooLarge(RequestRefused):
    """One request's encoding alone exceeds the provider's per-batch byte limit."""


class RequestOverQuota(RequestTooLarge):
    """One request's estimated input tokens alone exceed what one chunk of its model may
    hold (its quota, `Quotas.narrow`): no batch could ever take it."""


class UnencodableRequest(RequestRefused):
    """A request that cannot be sent as its line wrote it."""


class SinkFailed(Exception):
    """Writing a chunk's stored requests failed: not the request's fault (`error` is why,
    e.g. the work bucket's); planning cannot go on."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


# orjson writes every float from 1e16 up with an exponent, so an integer it read as a float
# (beyond 64 bits, so >= 2**63) shows as `e+` in the encoded line: a cheap test of every
# line, and the exact one (the line's own text) only for those.
_EXPONENT = b"e+"
_PLUS = ord("+")  # `int in bytes` is a memchr: the test costs ~50 ns on a 2 KB line
#: The deepest nesting orjson writes (it raises "Recursion limit reached" past it).
MAX_ENCODED_DEPTH = 254


class ChunkPlanner:
    """Cuts requests into chunks under each provider's `ChunkLimits`, one (provider, model)
    group at a time; `add` a request of the first round, `add_encoded` one a later round
    staged already, `finish` for the partly filled chunks at the end."""

    def __init__(
        self,
        limits: Callable[[str], ChunkLimits],
        encoders: Callable[[str], Encoder],
        observe: Observer | None = None,
        open_sink: OpenSink = _memory_sink,
        *,
        sizes_only: bool = False,
        narrow: Narrow | None = None,
        count: Count | None = None,
    ) -> None:
        """`open_sink` opens each new chunk's stored-requests sink (in memory by default).
        `sizes_only`: the chunks keep their sizes and counts, not their bytes, stored
        requests included (for a dry run, whose memory then stays small however large the
        chunks). `narrow` cuts a provider's limits for each model (its quota); `count`
        counts the input tokens of a request a later round staged already."""
        self._limits = limits
        self._narrow = narrow
        self._count = count
        self._per_model: dict[tuple[str, str], ChunkLimits] = {}
        self._encoders = encoders
        self._observe = observe
        self._open_sink: OpenSink = _discarding_sink if sizes_only else open_sink
        self._sizes_only = sizes_only
        self._open: dict[tuple[str, str], PlannedChunk] = {}
        self._per_provider: dict[str, tuple[ChunkLimits, Encoder, int]] = {}

    def _provider(self, provider: str) -> tuple[ChunkLimits, Encoder, int]:
        """The provider's limits, encoder and payload room, looked up once."""
        limits = self._limits(provider)
        room = limits.max_bytes - limits.envelope_bytes
        known = self._per_provider[provider] = (limits, self._encoders(provider), room)
        return known

    def add(self, request: Request, source: object = None) -> PlannedChunk | None:
        """Buffer `request`; return the chunk it displaced when that chunk was full.

        `source` is the input line (bytes) the request was read from: with it, an integer
        orjson had to read as a float is told from a float written as one. Raises
        `RequestTooLarge` (`RequestOverQuota`: over its model's quota on its own) or
        `UnencodableRequest`, leaving the planner unchanged.
        """
        known = self._per_provider.get(request.provider) or self._provider(request.provider)
        limits, encode, room = known
        try:
            line = encode(request)
            encoded = orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
            stored = encode_request(request)
        except Exception as exc:
            raise _unencodable(exc, source) from exc
        if _PLUS in encoded and isinstance(source, bytes) and _EXPONENT in encoded:
            _refuse_changed_integers(source)
        if len(encoded) > room:
            raise _too_large(encoded, request.provider, room)
        schema = request.schema
        entry = encode_entry(
            request.line,
            request.custom_id,
            schema.digest if schema else None,
            selected_by=request.selected_by,
            fallback=request.fallback,
        )
        tokens = self._observe(request, line) if self._observe is not None else None
        return self._place(
            request.provider, request.model, request.line, limits, encoded, entry, stored, tokens
        )

    def add_encoded(
        self,
        provider: str,
        model: str,
        line: int,
        encoded: bytes,
        entry: bytes,
        stored: bytes,
        tokens: int | None = None,
    ) -> PlannedChunk | None:
        """Buffer a request a later round staged already: its payload line (`encoded`), its
        manifest row and its stored request row (empty: none), each with its newline, for
        input line `line`, and its input tokens if counted. Returns and raises as `add`."""
        limits, _, room = self._per_provider.get(provider) or self._provider(provider)
        if len(encoded) > room:
            raise _too_large(encoded, provider, room)
        if tokens is None and self._count is not None:
            try:
                tokens = self._count(provider, model, encoded)
            except Exception:  # a line its provider would take, counted by nobody: uncounted
                tokens = None
        return self._place(provider, model, line, limits, encoded, entry, stored, tokens)

    def _model_limits(self, provider: str, model: str, limits: ChunkLimits) -> ChunkLimits:
        """The provider's limits as `narrow` cuts them for `model` (looked up once)."""
        if self._narrow is None:
            return limits
        key = (provider, model)
        found = self._per_model.get(key)
        if found is None:
            found = self._per_model[key] = self._narrow(provider, model, limits)
        return found

    def _place(
        self,
        provider: str,
        model: str,
        line: int,
        limits: ChunkLimits,
        encoded: bytes,
        entry: bytes,
        stored: bytes,
        tokens: int | None = None,
    ) -> PlannedChunk | None:
        """Add a checked request to its group's chunk, opening a new one when it is full."""
        key = (provider, model)
        limits = self._model_limits(provider, model, limits)
        cap = limits.max_input_tokens
        if cap is not None and tokens is not None and tokens > cap:
            raise RequestOverQuota(
                f"estimated {tokens:,} input tokens; one {provider}/{model} batch may hold "
                f"at most {cap:,} (its quota, {QUOTAS_ENV}): it could never be sent"
            )
        full: PlannedChunk | None = None
        current = self._open.get(key)
        if current is not None and (
            current.request_count + 1 > limits.max_requests
            or current.payload_bytes + len(encoded) > limits.max_bytes - limits.envelope_bytes
            or _over_tokens(current, tokens, limits)
        ):
            full, current = current, None
        try:
            if current is None:
                sink = self._open_sink(provider, model, line)
                current = PlannedChunk(provider, model, line, sink)
                if self._sizes_only:
                    current.payload, current.manifest = _ByteCount(), _ByteCount()
            if stored:
                current.requests.write(stored)
        except Exception as exc:
            raise SinkFailed(exc) from exc
        self._open[key] = current
        current.payload.write(encoded)
        current.manifest.write(entry)
        current.request_count += 1
        if tokens is not None:
            current.input_tokens = (current.input_tokens or 0) + tokens
        return full

    def finish(self) -> list[PlannedChunk]:
        """The partly filled chunks, in order of their first line (deterministic)."""
        rest = sorted(self._open.values(), key=lambda c: c.first_line)
        self._open.clear()
        return rest

    def open_chunks(self) -> list[PlannedChunk]:
        """The chunks still filling (to give up their sinks when planning fails)."""
        return list(self._open.values())


def _over_tokens(current: PlannedChunk, tokens: int | None, limits: ChunkLimits) -> bool:
    """Whether `tokens` more would put a chunk that holds some over its token cap (a
    request over the cap on its own is refused before: `RequestOverQuota`)."""
    cap = limits.max_input_tokens
    if cap is None or tokens is None or current.input_tokens is None:
        return False
    return current.input_tokens + tokens > cap


def _too_large(encoded: bytes, provider: str, room: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"{len(encoded)} bytes once encoded; one {provider} batch takes at most {room}"
    )


def _refuse_changed_integers(source: bytes) -> None:
    found = integer_out_of_range(source)
    if found is not None:
        path, literal = found
        raise UnencodableRequest(_beyond_64_bits(literal), path)


def _beyond_64_bits(literal: str) -> str:
    shown = literal if len(literal) <= 40 else f"{literal[:40]}... ({len(literal)} digits)"
    return (
        f"integer {shown} is beyond the 64-bit range (-2**63 to 2**64-1) and cannot be sent "
        "unchanged: write it as a string, or as a smaller number"
    )


def _unencodable(exc: Exception, source: object) -> UnencodableRequest:
    if "Integer exceeds 64-bit range" in str(exc) and isinstance(source, bytes):
        found = integer_out_of_range(source)
        if found is not None:
            return UnencodableRequest(_beyond_64_bits(found[1]), found[0])
    return UnencodableRequest(f"could not be encoded: {describe_error(exc)}")


def describe_error(exc: BaseException, limit: int = 200) -> str:
    """An exception raised by one line's work as a short reason for its result line."""
    if isinstance(exc, RecursionError) or "Recursion limit reached" in str(exc):
        return (
            f"nested too deeply (a request is written at most {MAX_ENCODED_DEPTH} levels "
            "deep, the provider's envelope included)"
        )
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."
